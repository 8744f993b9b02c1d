"""Recently used committed instances, decoded: saves a store read and a decode per input.

Only committed state enters it (the processor puts an instance here after its transaction
commits), so an aborted transaction never needs to touch it; a partition that leaves this
process, or whose store is brought up to the changelog again, is forgotten. Least recently used
instances go first once it holds more than ``size``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from stream_processors.core.instance import Instance

#: (partition, instance id)
Slot = tuple[int, str]


class InstanceCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._recent: OrderedDict[Slot, Instance] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recent)

    def get(self, slot: Slot) -> Instance | None:
        instance = self._recent.get(slot)
        if instance is not None:
            self._recent.move_to_end(slot)
        return instance

    def committed(self, instances: Mapping[Slot, Instance | None]) -> None:
        """Take what a transaction committed (None: the instance expired)."""
        recent = self._recent
        for slot, instance in instances.items():
            if instance is None:
                recent.pop(slot, None)
            else:
                recent[slot] = instance
                recent.move_to_end(slot)
        while len(recent) > self.size:
            recent.popitem(last=False)

    def forget(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for slot in [s for s in self._recent if s[0] in gone]:
            del self._recent[slot]
