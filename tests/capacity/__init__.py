"""Tests of services/capacity/."""
