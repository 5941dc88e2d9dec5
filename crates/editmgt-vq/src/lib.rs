//! Not implemented yet: see the project issues.
