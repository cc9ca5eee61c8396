"""Training, export and evaluation of the emotion CNN."""
