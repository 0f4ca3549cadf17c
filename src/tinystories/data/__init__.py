"""Stories in and out: every accepted data format, packing, synthesis shards, the Instruct format,
tokenizers and word forms."""
