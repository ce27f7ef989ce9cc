"""Tests of services/providers/."""
