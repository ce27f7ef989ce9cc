"""Tests of services/routing/."""
