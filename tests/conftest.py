from qkdlink import toolchain


toolchain.setup()
