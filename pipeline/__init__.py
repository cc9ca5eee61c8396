"""Streaming framework: message codec, stage API, topology config, transport and launcher."""
