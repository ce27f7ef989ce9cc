"""Tests of services/api/."""
