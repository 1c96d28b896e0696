import sys

from performers.cli import main

# Guarded: processes started with the "spawn" method (torch.multiprocessing, DataLoader workers)
# import this module again and must not run the command a second time.
if __name__ == "__main__":
    sys.exit(main())
