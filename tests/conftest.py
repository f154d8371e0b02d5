from qkdlink import toolchain


toolchain.setup()


# The slowest tests, slowest first: place and route of whole board tops and cores (minutes each), then the link
# through the gateware under Verilator.
_SLOWEST = (
    "tests/boards/test_top.py::BitstreamTestCase",
    "tests/boards/test_build.py::BitstreamTestCase",
    "tests/boards/test_capture_build.py::ICEBreakerBitstreamTestCase",
    "tests/boards/test_sampler.py::SamplerBitstreamTestCase",
    "tests/test_cli.py::LinkCLITestCase::test_demo_on_rtl_boards",
    "tests/gateware/test_hostlink.py",
    "tests/sim/test_boardlink.py",
    "tests/host/test_node.py",
)


def pytest_collection_modifyitems(session, config, items):
    """Put the slowest tests at the head of each worker's share, taking turns, so that both workers start with them
    and the fast ones fill in at the end. `make test` schedules with pytest-xdist's ``worksteal``, which gives
    each of its two workers one contiguous half of this list and lets an idle worker take tests from the back of
    the other's half."""
    def rank(item):
        return next((index for index, prefix in enumerate(_SLOWEST) if item.nodeid.startswith(prefix)),
                    len(_SLOWEST))

    slow = sorted((item for item in items if rank(item) < len(_SLOWEST)), key=rank)
    fast = [item for item in items if rank(item) == len(_SLOWEST)]
    first, second = slow[0::2], slow[1::2]
    split = max(0, len(items) // 2 - len(first))
    items[:] = first + fast[:split] + second + fast[split:]
