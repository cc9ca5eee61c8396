#!/usr/bin/env python
"""Entry point: ``python run_pipeline.py --help``."""

from pipeline.tools.cli import main

if __name__ == "__main__":
    main()
