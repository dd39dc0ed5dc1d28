//! napi binding placeholder.
