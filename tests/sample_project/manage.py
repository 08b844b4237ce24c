#!/usr/bin/env python
"""A user's project with django-readonly-pool installed (used by tests/test_sample_project.py)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
