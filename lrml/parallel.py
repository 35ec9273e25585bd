"""Data-parallel strategies for the trainer: one process (nothing to exchange) or a process group.

The trainer asks its strategy which worker it is, how many pairs a step of this worker takes and
which steps to take in an epoch, to exchange what the workers share (after ``backward``, after the
optimizer step, at the ends of an epoch), to hand every worker the rows the others own (before a
checkpoint), and to agree on values every worker must share (the validation metrics' sums).

Each worker trains on a block of whole users (``lrml.data.Shard``), so the user table's rows a
worker updates are rows no other worker reads: they are never exchanged, only gathered when a
checkpoint is written. The tables every worker reads (items, LRML's memory and keys) are shared in
one of three ways, chosen by ``sync_every``:

- ``None`` (the default), on one node with room in its shared memory: the shared tables and their optimizer state live in memory
  every worker maps (``SharedTables``). Each worker takes steps of a whole ``batch_size`` on its own
  users and writes its updates in place, where the others read them at once, without locks, as
  Hogwild (Recht et al., 2011) does: nothing is exchanged, and the workers meet only at the ends
  of an epoch. Workers on several nodes, or on GPUs, take rounds of ``auto_sync_every`` steps.
- ``1``, exact: every step, each worker computes the gradient of its share of the global batch,
  the shared tables' gradients are summed over the workers, and every worker takes the global
  batch's step. The loss is a sum over the batch, so the sum is the global batch's gradient. It
  pays where an exchange costs little beside a step (fast links, big batches).
- ``k > 1``, local steps: each worker takes ``k`` steps of a whole ``batch_size`` on its own users,
  then the changes every worker made to the shared tables since the last exchange are summed (one
  all-reduce) and applied on every worker, so every pair's update counts once, as in one process;
  the updates of one round do not see each other's. A collective on gloo over loopback costs about
  a step's time here (``bench/gradient_exchange.py``), so an exchange every step leaves two workers
  slower than one; the rounds' cost in quality is measured in ``bench/data_parallel.py``.

With sparse gradients on gloo, DistributedDataParallel aborted a CPU worker with a corrupted heap
within 20,000 steps in each of two runs here (torch 2.13), and NCCL has no sparse all-reduce: a
sparse gradient travels as its rows, all-gathered with the dense collectives every backend has.
"""
from __future__ import annotations

import math
import os
import time
import uuid

import torch
import torch.distributed as dist

from lrml.model import Recommender, split_parameters

# What an exchange and a step cost on the project's machine (python bench/gradient_exchange.py, rounded from its
# earlier runs): an all-reduce over gloo on loopback about 1 ms plus 4 ns a float (the copies around it included),
# a training step 3.4 us a pair. Its runs move by tens of percent there (four later ones: 0.4 to 0.7 ms plus 5.5 to
# 7.1 ns a float, 3.8 to 5.3 us a pair: rounds of 5 to 9 steps at ml-1m's shape, where these constants give 8).
# A round of local steps is made long enough that its exchange costs about a tenth of its training.
EXCHANGE_SECONDS, EXCHANGE_SECONDS_PER_FLOAT, STEP_SECONDS_PER_PAIR = 1e-3, 4e-9, 3.4e-6
EXCHANGE_SHARE = 0.1
SHARED_MEMORY = "/dev/shm"  # where workers on one machine keep the tables they share


def auto_sync_every(shared_floats: int, batch_size: int) -> int:
    """Steps per round of local steps (at least 2): as few as keep a round's exchange near a tenth of its training."""
    exchange = EXCHANGE_SECONDS + shared_floats * EXCHANGE_SECONDS_PER_FLOAT
    return max(2, math.ceil(exchange / (EXCHANGE_SHARE * batch_size * STEP_SECONDS_PER_PAIR)))


class SingleProcess:
    """One worker holds the whole batch: no exchange, every value is already agreed."""

    rank = 0
    world_size = 1
    exchange_seconds = 0.0
    steps_per_step = 1

    def attach(self, model: Recommender, batch_size: int) -> None:
        """Nothing to set up for one worker."""

    def batch_share(self, batch_size: int) -> int:
        return batch_size

    def user_block(self, num_users: int) -> tuple[int, int]:
        return 0, num_users

    def steps(self, pairs: int, batch_size: int) -> range:
        """The steps of an epoch over ``pairs``: one pass."""
        return range(-(-pairs // batch_size))

    def begin_epoch(self) -> None:
        """Nothing to exchange."""

    def after_backward(self) -> None:
        """One worker's gradient is the global batch's."""

    def after_step(self) -> None:
        """Nothing to exchange."""

    def end_epoch(self) -> None:
        """Nothing to exchange."""

    def share_state(self, optimizer) -> None:
        """Nothing is shared."""

    def gather_owned(self, optimizer) -> None:
        """One worker owns every row."""

    def agree_max(self, value: int) -> int:
        return value

    def agree_sum(self, values: list[float]) -> list[float]:
        return values


class Collective:
    """The workers of the default ``torch.distributed`` process group, training one model together.

    ``attach`` copies rank 0's weights to every worker, as DDP does, so the workers start equal.
    """

    def __init__(self, sync_every: int | None = None):
        if sync_every is not None and sync_every < 1:
            raise ValueError(f"sync_every={sync_every}: must be at least 1 (or None: auto_sync_every)")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.sync_every = sync_every
        self._owned: list[torch.nn.Parameter] = []
        self._gradients: GradientSync | None = None
        self._changes: ChangeSum | None = None
        self._shared: SharedTables | None = None
        self._gradient_seconds = 0.0
        self.device = torch.device("cpu")

    def attach(self, model: Recommender, batch_size: int) -> None:
        """Start from rank 0's weights; set up the exchange of the shared tables for steps of ``batch_size``."""
        with torch.no_grad():
            for param in model.parameters():
                dist.broadcast(param, src=0)
        self.device = next(model.parameters()).device
        self._owned = model.user_tables()
        sparse, dense = ([param for param in group if all(param is not owned for owned in self._owned)]
                         for group in split_parameters(model))
        if self.sync_every is None and self.device.type == "cpu" and self._memory_is_shared(sparse + dense):
            self._shared = SharedTables(sparse + dense)
            return
        if self.sync_every is None:
            self.sync_every = auto_sync_every(sum(param.numel() for param in sparse + dense), batch_size)
        if self.sync_every == 1:
            self._gradients = GradientSync(sparse, dense)
            # the loss terms every worker holds whole (LRML's regulariser on its memory) are summed too: 1/N each
            model.shared_term_weight = 1.0 / self.world_size
        else:
            self._changes = ChangeSum(sparse + dense, self.sync_every)

    def _memory_is_shared(self, params: list[torch.nn.Parameter]) -> bool:
        """Whether every worker sees a file rank 0 makes in its shared memory (``/dev/shm``: one machine's), where
        ``params`` fit with their optimizer state."""
        # the tables and at most two optimizer tensors each (Adam's moments), and the step counts
        nbytes = 3 * sum(param.numel() * param.element_size() for param in params) + 8 * self.world_size
        probe = _in_shared_memory(f"lrml-probe-{uuid.uuid4().hex}")
        if self.rank == 0 and has_room(SHARED_MEMORY, nbytes):
            open(probe, "x").close()
        dist.barrier()  # made before any worker looks
        [seen] = self.agree_sum([float(os.path.exists(probe))])
        if self.rank == 0 and os.path.exists(probe):
            os.unlink(probe)
        return seen == self.world_size

    @property
    def exchange(self) -> str:
        """How the shared tables are kept equal, in words (each epoch's report carries it)."""
        if self._shared is not None:
            return "shared memory"
        return "every step, exact" if self.sync_every == 1 else f"every {self.sync_every} steps"

    @property
    def steps_per_step(self) -> int:
        """Steps of one process that a step of this worker stands for: one of the global batch's, or, with local
        steps, one for each worker taking its own step beside it (``lrml.optim.Optimizer``)."""
        return 1 if self.sync_every == 1 else self.world_size

    def batch_share(self, batch_size: int) -> int:
        """Pairs a step of this worker takes: its share of the global batch, or a whole batch of its own steps."""
        return math.ceil(batch_size / self.world_size) if self.sync_every == 1 else batch_size

    def user_block(self, num_users: int) -> tuple[int, int]:
        """The users this worker trains on and owns (``lrml.data.Shard``'s block)."""
        return self.rank * num_users // self.world_size, (self.rank + 1) * num_users // self.world_size

    @property
    def exchange_seconds(self) -> float:
        """Seconds this worker has spent exchanging the shared tables, waiting for the others included."""
        waited = self._shared.seconds if self._shared is not None else 0.0
        return waited + self._gradient_seconds + (self._changes.seconds if self._changes is not None else 0.0)

    def share_state(self, optimizer) -> None:
        """With shared memory: the shared tables' optimizer state there too, as it is now (every worker must hold
        the same). Call it when the optimizer is made and after a checkpoint is restored into it."""
        if self._shared is not None:
            self._shared.share_state(optimizer)

    def steps(self, pairs: int, batch_size: int):
        """The steps of this worker's epoch over its ``pairs``. Every worker takes as many as the one with the most
        pairs needs (a collective); with shared memory, the workers instead take steps until they have taken,
        together, as many as their pairs need, so that one slowed down is not waited for."""
        mine = -(-pairs // batch_size)
        if self._shared is not None:
            return self._shared.steps(int(self.agree_sum([mine])[0]))
        return range(self.agree_max(mine))

    def begin_epoch(self) -> None:
        """Count changes from the shared tables as they are now, the same on every worker (after the last epoch's
        exchange, or after every worker restored one checkpoint); with shared memory, start when every worker has
        finished the last epoch (its validation and checkpoint read the tables the others would write)."""
        if self._changes is not None:
            self._changes.restart()
        if self._shared is not None:
            self._shared.meet()

    def after_backward(self) -> None:
        if self._gradients is not None:
            started = time.perf_counter()
            self._gradients()
            self._gradient_seconds += time.perf_counter() - started

    def after_step(self) -> None:
        if self._changes is not None:
            self._changes.step()

    def end_epoch(self) -> None:
        """Exchange what is left of the round, so that every worker validates the same shared tables."""
        if self._changes is not None:
            self._changes.exchange()
        if self._shared is not None:
            self._shared.meet()
            self._shared.restart_count()

    def gather_owned(self, optimizer) -> None:
        """Every worker's rows of the user tables, and of their optimizer state, on every worker: before a
        checkpoint, which holds the whole model. A collective: every worker calls it."""
        for param in self._owned:
            state = [value for part in optimizer.parts for value in part.state.get(param, {}).values()
                     if torch.is_tensor(value) and value.shape == param.shape]
            for table in (param.data, *state):
                self._gather_blocks(table)

    def _gather_blocks(self, table: torch.Tensor) -> None:
        """Each worker's block of rows of ``table`` written into every worker's copy."""
        bounds = [(rank * len(table) // self.world_size, (rank + 1) * len(table) // self.world_size)
                  for rank in range(self.world_size)]
        longest = max(end - first for first, end in bounds)
        first, end = bounds[self.rank]
        mine = table.new_zeros((longest, *table.shape[1:]))
        mine[:end - first] = table[first:end]
        blocks = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(blocks, mine)
        with torch.no_grad():
            for (first, end), block in zip(bounds, blocks):
                table[first:end] = block[:end - first]

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over the workers (every worker must take the same number of steps)."""
        found = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return int(found.item())

    def agree_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the workers."""
        found = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(found)
        return found.tolist()


class SharedTables:
    """``params`` (every worker's, equal) moved into memory that every worker of one machine maps, so that a
    worker's in-place update is every worker's at once (Hogwild). Each tensor lives in a file of the machine's
    shared memory that rank 0 makes and every worker maps; the file is removed once all have, so the memory goes
    when the last worker exits. Making the tables, sharing optimizer state and ``meet`` are collectives."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.seconds = 0.0
        self.params = params
        self._state: dict[tuple[int, str], torch.Tensor] = {}
        with torch.no_grad():
            for param in params:
                param.data = self._mapped(param.data)
        # the steps each worker took this epoch, each worker writing only its own
        self._taken = self._mapped(torch.zeros(dist.get_world_size(), dtype=torch.long))

    def steps(self, total: int):
        """This worker's steps, counted 0, 1, ..., until the workers have taken ``total`` together. A worker reads
        the others' counts without waiting for them, so each may take one step more: ``total + world - 1`` at most."""
        mine, step = self._taken[dist.get_rank()], 0
        while int(self._taken.sum()) < total:
            mine += 1
            yield step
            step += 1

    def restart_count(self) -> None:
        """Count the next epoch's steps from zero: rank 0, between two ``meet``s."""
        if dist.get_rank() == 0:
            self._taken.zero_()

    def share_state(self, optimizer) -> None:
        """Each shared parameter's optimizer state that has its shape (Adam's moments, Adagrad's sums) mapped,
        its values kept: begun now if the optimizer has not begun it."""
        for part in optimizer.parts:
            for param in self.params:
                state = part.state[param]
                if not state:
                    state.update(part.new_state(param))
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        if (id(param), key) not in self._state:
                            self._state[id(param), key] = self._mapped(value)
                        else:
                            self._write(self._state[id(param), key], value)
                        state[key] = self._state[id(param), key]

    def meet(self) -> None:
        """Wait until every worker gets here (the time waited is counted as exchanging)."""
        started = time.perf_counter()
        dist.barrier()
        self.seconds += time.perf_counter() - started

    def _mapped(self, values: torch.Tensor) -> torch.Tensor:
        """A tensor of ``values`` (the same on every worker) in memory every worker maps."""
        path = _in_shared_memory(f"lrml-shared-{uuid.uuid4().hex}")
        if dist.get_rank() == 0:
            mapped = torch.from_file(path, shared=True, size=values.numel(), dtype=values.dtype)
        dist.barrier()  # the file exists
        if dist.get_rank() != 0:
            mapped = torch.from_file(path, shared=True, size=values.numel(), dtype=values.dtype)
        mapped = mapped.view(values.shape)
        self._write(mapped, values)
        if dist.get_rank() == 0:
            os.unlink(path)
        return mapped

    @staticmethod
    def _write(mapped: torch.Tensor, values: torch.Tensor) -> None:
        """Rank 0 writes ``values`` into ``mapped``; every worker waits until it has (all hold the same values)."""
        if dist.get_rank() == 0:
            mapped.copy_(values)
        dist.barrier()


class ChangeSum:
    """Local steps: every ``every`` steps each worker sends the change it made to ``params`` since its last send,
    summed over the workers by an all-reduce that runs while the next round trains, and takes in the others'
    changes of the round before (one round late). ``exchange`` ends with every worker on the same values.

    ``agreed`` holds every worker's changes up to the last sum that arrived, and is the same on every worker;
    a worker's ``params`` are ``agreed`` plus its own changes since.
    """

    def __init__(self, params: list[torch.nn.Parameter], every: int):
        self.params, self.every, self.steps, self.seconds = params, every, 0, 0.0
        self.agreed = torch.cat([param.detach().reshape(-1) for param in params])
        self.sent, self.outgoing, self.arriving = (self.agreed.clone() for _ in range(3))
        self.in_flight: dist.Work | None = None

    @torch.no_grad()
    def restart(self) -> None:
        """Take the parameters as they are now as agreed, with nothing sent: every worker must hold the same."""
        if self.in_flight is not None:
            raise RuntimeError("an exchange is still in flight: call exchange() first")
        for param, agreed, sent in zip(self.params, self._views(self.agreed), self._views(self.sent)):
            agreed.copy_(param)
            sent.copy_(param)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [view.view_as(param) for view, param in zip(flat.split([p.numel() for p in self.params]), self.params)]

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._round(wait_for_all=False)

    def exchange(self) -> None:
        """The change since the last send summed now, and every earlier one taken in: the workers agree."""
        self._round(wait_for_all=True)

    @torch.no_grad()
    def _round(self, wait_for_all: bool) -> None:
        started = time.perf_counter()
        params, sent, outgoing = self.params, self._views(self.sent), self._views(self.outgoing)
        for param, last, change in zip(params, sent, outgoing):
            torch.sub(param, last, out=change)  # this worker's change since it last sent
        if self.in_flight is not None:
            self.in_flight.wait()
            self.agreed += self.arriving  # every worker's changes of the round before
        if wait_for_all:
            dist.all_reduce(self.outgoing)
            self.agreed += self.outgoing
            self.in_flight = None
        for param, agreed, change in zip(params, self._views(self.agreed), outgoing):
            if wait_for_all:
                param.copy_(agreed)
            else:
                torch.add(agreed, change, out=param)  # what the workers agreed, and this worker's change on its way
        for param, last in zip(params, sent):
            last.copy_(param)
        if not wait_for_all:
            self.outgoing, self.arriving = self.arriving, self.outgoing
            self.in_flight = dist.all_reduce(self.arriving, async_op=True)
        self.seconds += time.perf_counter() - started


class GradientSync:
    """Sum the gradients of ``sparse`` (embedding tables' sparse gradients) and ``dense`` parameters over the
    workers of the default process group; call it between ``backward`` and the optimizer step, on every
    worker, at every step."""

    def __init__(self, sparse: list[torch.nn.Parameter], dense: list[torch.nn.Parameter]):
        self.sparse, self.dense = sparse, dense
        self.device = (sparse + dense)[0].device if sparse + dense else torch.device("cpu")
        self.world = dist.get_world_size()

    def __call__(self) -> None:
        if self.dense:
            self._sum_dense()
        if self.sparse:
            self._sum_sparse()

    def _sum_dense(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for param, summed in zip(self.dense, flat.split([g.numel() for g in grads])):
            param.grad = summed.view_as(param)

    def _sum_sparse(self) -> None:
        grads = [_rows(p) for p in self.sparse]
        counts = self._gather(torch.tensor([len(rows) for rows, _ in grads], device=self.device))
        counts = counts.view(self.world, len(grads)).tolist()  # counts[worker][parameter]
        for index, (param, (rows, values)) in enumerate(zip(self.sparse, grads)):
            per_worker = [worker_counts[index] for worker_counts in counts]
            longest = max(per_worker)
            if longest == 0:
                param.grad = None
                continue
            all_rows = _unpad(self._gather(_pad(rows, longest)), per_worker)
            all_values = _unpad(self._gather(_pad(values, longest)), per_worker)
            param.grad = torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values, param.shape,
                                                 check_invariants=True).coalesce()

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every worker's ``tensor`` (all the same shape), concatenated in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)


def has_room(folder: str, nbytes: int) -> bool:
    """Whether ``folder`` exists with twice ``nbytes`` free. A file of shared memory is given its pages as they are
    written, so one that outgrows the space left kills its process (SIGBUS), and other trials on the machine map
    theirs in the same folder (a container's ``/dev/shm`` is often 64 MB)."""
    if not os.path.isdir(folder):
        return False
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize >= 2 * nbytes


def _in_shared_memory(name: str) -> str:
    """The path of rank 0's file ``name`` in this worker's shared memory (a collective: rank 0's name is every
    worker's)."""
    names = [name]
    dist.broadcast_object_list(names, src=0)
    return os.path.join(SHARED_MEMORY, names[0])


def _rows(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices and row values of ``param``'s sparse gradient (none when it has no gradient)."""
    if param.grad is None:
        return (torch.empty(0, dtype=torch.long, device=param.device),
                param.new_empty((0, *param.shape[1:])))
    grad = param.grad.coalesce()
    return grad.indices()[0], grad.values()


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` with zero rows appended up to ``length`` rows (all_gather needs equal shapes)."""
    padded = tensor.new_zeros((length, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    return padded


def _unpad(gathered: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The real rows of each worker's padded block, concatenated."""
    longest = max(counts)
    return torch.cat([gathered[worker * longest: worker * longest + count] for worker, count in enumerate(counts)])
