"""The Linux syscalls the sidecar depends on, each in a few lines with its layout explained."""
