//! virtio devices over the virtio-mmio transport. (in progress)
