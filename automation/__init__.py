"""Cloud operations (dev/prod) on the Pulumi Automation API: the verbs cli.py dispatches to."""
