"""Publishing: staging and upload to the Hub, model and dataset cards and their templates."""
