"""What every stage shares around its trainer: the run lifecycle, TrainingArguments, the dry run."""
