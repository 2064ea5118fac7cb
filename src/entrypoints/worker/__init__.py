"""The workflow container: the process that drives a project's runs through the pipeline."""
