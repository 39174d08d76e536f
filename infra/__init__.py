"""The AWS platform of the factory simulator as a Pulumi program (entry point: `infra/__main__.py`)."""
