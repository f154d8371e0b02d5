"""How the stack numbers bases, intensities and time-tagger channels: one definition for gateware, host and sim.

The gateware may not import the host and the host may not import the gateware (``DESIGN.md``), so what both must
agree on lives here.
"""

__all__ = ["Z", "X", "NOT_SENT", "CHANNELS", "SYNC"]


#: Basis numbers: Z is the key basis, X the test basis.
Z, X = 0, 1

#: Intensity index of a slot Alice did not send (no random word for it; the source did not fire). Indices 0, 1, 2
#: are the signal, decoy and weakest intensity. A not-sent slot never sifts.
NOT_SENT = 3

#: Time-tagger channels in order: the four detectors (bit c of a detector pattern is channel c) and the sync.
CHANNELS = ("z0", "z1", "x0", "x1", "sync")
SYNC = CHANNELS.index("sync")
