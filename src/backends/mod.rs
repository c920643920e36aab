//! Host-side I/O backends. Nothing in here knows about virtio.
