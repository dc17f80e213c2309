//! Statistics for experiment evaluation.
