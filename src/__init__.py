"""obp-workflow: the Workflow Service of the Open Brain Platform."""
