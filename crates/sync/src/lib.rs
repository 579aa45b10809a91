//! The sans-IO sync engine (being written).
