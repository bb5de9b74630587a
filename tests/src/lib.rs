//! Support code shared by hk's VM tests.
