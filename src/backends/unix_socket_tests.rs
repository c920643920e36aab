//! Socket tests.
