"""Tests of services/ledger/."""
