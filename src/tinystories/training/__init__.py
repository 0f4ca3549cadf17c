"""Training runs: the Trainer additions, the run record, the shared tail, and the pretraining and
fine-tuning cores."""
