"""qkdlink: an open, FPGA-offloaded QKD link stack."""
