"""Tests of services/resilience/."""
