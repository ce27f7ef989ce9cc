"""Tests of services/platform/."""
