"""Tests of services/dev/."""
