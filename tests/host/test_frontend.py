"""Alice's and Bob's board front ends (host/frontend.py) against the host link's model on TCP."""

import unittest

import numpy as np

from qkdlink.host.board import Board, unpack_beats
from qkdlink.host.frontend import BoardChoices
from qkdlink.host.messages import ProtocolError
from qkdlink.sim.serve import serve
from qkdlink.wire import Role

from .test_board import make_model


class BoardChoicesTestCase(unittest.TestCase):
    def test_frames_past_the_block_are_refused_before_any_is_freed(self):
        # Bob's frame counts arrive before their tag: Alice's board must not free frames past the block on them.
        server = serve(lambda: make_model(Role.ALICE))
        self.addCleanup(server.close)
        board = Board.open(server.url)
        self.addCleanup(board.close)
        choices = BoardChoices(board, released=100, frames=8)
        empty = np.zeros(0, np.int64), np.zeros(0, np.uint8)
        with self.assertRaisesRegex(ProtocolError, r"Bob reports 109 frames complete, past the block's end at "
                                                   r"frame 108"):
            choices.answer(*empty, frames=109)
        self.assertEqual(choices.released, 100)
        # Detections past the block, in a batch that claims no frame complete, are refused too.
        with self.assertRaisesRegex(ProtocolError, r"Bob's detections name frames 108..108, outside the frames "
                                                   r"100..107 being sifted"):
            choices.answer(np.array([108 << board.frame_bits]), np.zeros(1, np.uint8), frames=0)
        choices.answer(*empty, frames=108)
        self.assertEqual(choices.released, 108)
        with server.lock:
            written = server.board.consume("releases")
        np.testing.assert_array_equal(unpack_beats(board.streams["releases"], written)["frame"], np.arange(100, 108))
