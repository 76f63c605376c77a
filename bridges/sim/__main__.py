"""`python -m bridges.sim`: the strict Realtime GA simulator."""

from bridges.sim.server import main

main()
