"""Cloud stacks (dev/prod) on the Pulumi Automation API: `cloud_stack.CloudStack` implements the verbs."""
