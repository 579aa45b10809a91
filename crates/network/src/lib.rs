//! The libp2p network (being written).
