"""`tidebank demo`: a short workload that shows the ledger at work and checks it.

It creates accounts on two ledgers (a quarter of them with
debits_must_not_exceed_credits), funds them, runs batched transfers, then walks
through the ledger's rules one by one: a pending transfer posted and one voided,
an overdraft rejected with exceeds_credits, a linked chain that fails as a whole,
and an identical re-submission answered with exists. At the end it reads every
account back and checks, per ledger, that total debits equal total credits, and
that each account holds exactly what the acknowledged transfers put there.

The batched transfers keep each transfer's two accounts on one shard (accounts are
grouped by (ledger, shard), each group with its own funding account). Then escrow
trades run on their own ledger, between a buyer and a seller on different shards:
one confirmed (the fee goes to the platform), one partly refunded then split by a
dispute, one refunded by its ship-by timer.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from tidebank.client import (
    Account,
    AccountFlags,
    Client,
    NewTrade,
    TradeClosedBy,
    TradeState,
    Transfer,
    TransferFlags,
    new_id,
)
from tidebank.common.limits import BATCH_ITEMS_MAX
from tidebank.common.tls import ClientTls

LEDGERS = (1, 2)
ESCROW_LEDGER = 3  # trades run on their own ledger: their fees leave the demo's accounts
CLEARING_LEDGER = 4  # the banks' clearing cycle runs on its own ledger too
CLEARING_BANKS = ("bank-a", "bank-b", "bank-c", "bank-d")
CODE_FUNDING = 1
CODE_LIMITED = 10  # debits_must_not_exceed_credits
CODE_OPEN = 20
CODE_TRANSFER = 1
FUNDING_AMOUNT = 1_000_000
MAX_AMOUNT = 1_000
WRITE_ATTEMPTS = 3  # the client retries within timeout_s; this is for a write whose outcome stayed unknown
APPLIED = ("created", "exists")  # a retried batch answers exists for what the first try applied


class DemoError(RuntimeError):
    pass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoReport:
    checks: list[Check] = field(default_factory=list)
    accounts_created: int = 0
    transfers_submitted: int = 0
    transfer_outcomes: Counter = field(default_factory=Counter)
    transfers_per_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _status(result: Any) -> str:
    name = getattr(result.status, "name", None)
    return name.lower() if isinstance(name, str) else str(result.status)


class _Demo:
    def __init__(self, client: Client, rng: random.Random, console: Console, batch_size: int, concurrency: int):
        self.c = client
        self.rng = rng
        self.console = console
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.report = DemoReport()
        # the model: what each account should hold, from the acknowledged transfers
        self.debits: dict[int, int] = defaultdict(int)
        self.credits: dict[int, int] = defaultdict(int)
        self.booked: set[int] = set()  # transfer ids already in the model

    # ---- helpers ---------------------------------------------------------------

    def say(self, step: str, text: str) -> None:
        self.console.print(f"[bold]{step:<11}[/] {text}", soft_wrap=True)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.report.checks.append(Check(name, ok, detail))
        mark = "[green]ok[/]" if ok else "[red]FAILED[/]"
        self.say(name, f"{detail}  {mark}")

    def new_id_on(self, shard_id: int) -> int:
        while True:
            i = new_id()
            if self.shard_map.shard_id_for(i) == shard_id:
                return i

    def _retry(self, what: str, fn: Callable[[], list], attempts: int = WRITE_ATTEMPTS) -> list:
        """Call fn; re-submit (same ids, so safe) if the client gives up on it."""
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as e:  # the client's errors: no leader yet, outcome unknown, ...
                if attempt == attempts:
                    tries = f" {attempts} times" if attempts > 1 else ""
                    raise DemoError(f"{what} failed{tries}: {type(e).__name__}: {e}") from e
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def by_index(results: list, n: int) -> list[str]:
        """Status names of the n items, in request order."""
        if sorted(r.index for r in results) != list(range(n)):
            raise DemoError(f"expected one result per item ({n}), got {len(results)}")
        return [_status(r) for r in sorted(results, key=lambda r: r.index)]

    def create_accounts(self, accounts: list) -> list[str]:
        statuses: list[str] = []
        for i in range(0, len(accounts), BATCH_ITEMS_MAX):
            chunk = accounts[i : i + BATCH_ITEMS_MAX]
            results = self._retry("create_accounts", lambda chunk=chunk: self.c.create_accounts(chunk))
            statuses += self.by_index(results, len(chunk))
        return statuses

    def create_transfers(self, transfers: list) -> list[str]:
        results = self._retry("create_transfers", lambda: self.c.create_transfers(transfers))
        statuses = self.by_index(results, len(transfers))
        for t, s in zip(transfers, statuses, strict=True):
            # "exists" on a retried batch: an earlier try applied it and the answer was lost
            if s in APPLIED and t.id not in self.booked:
                self.booked.add(t.id)
                self.apply(t)
        return statuses

    def apply(self, t: Any) -> None:
        """Book an acknowledged transfer in the model (pending amounts cancel out once
        posted or voided; the demo resolves every pending transfer it makes)."""
        if t.flags & (TransferFlags.PENDING | TransferFlags.VOID_PENDING_TRANSFER):
            return
        self.debits[t.debit_account_id] += t.amount
        self.credits[t.credit_account_id] += t.amount

    def transfer(
        self,
        debit: int,
        credit: int,
        amount: int,
        ledger: int,
        *,
        flags: int = 0,
        pending_id: int = 0,
        timeout: int = 0,
        id: int | None = None,
    ) -> Transfer:
        return Transfer(
            id=id if id is not None else new_id(near=debit, slot_count=self.shard_map.slot_count),
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            pending_id=pending_id,
            timeout=timeout,
            ledger=ledger,
            code=CODE_TRANSFER,
            flags=flags,
        )

    # ---- phases ----------------------------------------------------------------

    def run(self, n_accounts: int, n_transfers: int) -> DemoReport:
        limited_flag = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        self.shard_map = self.c.shard_map()  # ids are placed with tidebank.common.keys.slot_of over this map
        shards = sorted(s.shard_id for s in self.shard_map.shards)
        groups = [(ledger, shard) for ledger in LEDGERS for shard in shards]
        self.say(
            "cluster", f"{len(shards)} shards, ledgers {', '.join(map(str, LEDGERS))}; transfers stay within one shard"
        )

        # accounts: a funding account per (ledger, shard), the rest spread evenly
        funding = {
            g: Account(
                id=self.new_id_on(g[1]),
                ledger=g[0],
                code=CODE_FUNDING,
            )
            for g in groups
        }
        members: dict[tuple[int, int], list[int]] = {g: [] for g in groups}
        limited: list[Any] = []
        regular = []
        for i in range(n_accounts):
            g = groups[i % len(groups)]
            is_limited = (i // len(groups)) % 4 == 0  # every 4th account of each group
            a = Account(
                id=self.new_id_on(g[1]),
                ledger=g[0],
                code=CODE_LIMITED if is_limited else CODE_OPEN,
                flags=limited_flag if is_limited else AccountFlags.NONE,
            )
            regular.append(a)
            members[g].append(a.id)
            if is_limited:
                limited.append((g, a))
        # scenario accounts on ledger 1, first shard
        home = groups[0]
        alice = Account(id=self.new_id_on(home[1]), ledger=home[0], code=CODE_LIMITED, flags=limited_flag)
        bob = Account(
            id=self.new_id_on(home[1]),
            ledger=home[0],
            code=CODE_OPEN,
        )
        everyone = [*funding.values(), *regular, alice, bob]
        t0 = time.perf_counter()
        statuses = self.create_accounts(everyone)
        counts = Counter(statuses)
        self.report.accounts_created = counts["created"]
        self.check(
            "accounts",
            counts["created"] == len(everyone),
            f"{counts['created']} of {len(everyone)} created ({n_accounts} + {len(funding)} funding + 2 "
            f"for the walk-through), {len(limited) + 1} with debits_must_not_exceed_credits "
            f"in {time.perf_counter() - t0:.2f} s" + _others(counts, "created"),
        )

        # funding: every limited account gets money from its group's funding account
        fund = [self.transfer(funding[g].id, a.id, FUNDING_AMOUNT, g[0]) for g, a in limited]
        fund.append(self.transfer(funding[home].id, alice.id, 1_000, home[0]))
        statuses = []
        for i in range(0, len(fund), BATCH_ITEMS_MAX):
            statuses += self.create_transfers(fund[i : i + BATCH_ITEMS_MAX])
        counts = Counter(statuses)
        self.check(
            "funding",
            counts["created"] == len(fund),
            f"{counts['created']} of {len(fund)} funding transfers created" + _others(counts, "created"),
        )

        self.batched_transfers(members, funding, n_transfers)
        self.walk_through(funding[home].id, alice.id, bob.id, home[0])
        self.verify_balances([a.id for a in everyone])
        self.escrow_walk_through(shards)
        self.clearing_cycle()
        return self.report

    def batched_transfers(self, members: dict, funding: dict, n: int) -> None:
        if n == 0:
            return
        by_shard: dict[int, list] = defaultdict(list)
        groups = [g for g in members if members[g]]
        for _ in range(n):
            g = self.rng.choice(groups)
            pool = members[g] + [funding[g].id]
            debit, credit = self.rng.sample(pool, 2) if len(pool) > 1 else (funding[g].id, pool[0])
            by_shard[g[1]].append(self.transfer(debit, credit, self.rng.randint(1, MAX_AMOUNT), g[0]))
        batches = [ts[i : i + self.batch_size] for ts in by_shard.values() for i in range(0, len(ts), self.batch_size)]
        self.rng.shuffle(batches)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.concurrency) as ex:
            all_statuses = list(ex.map(self.create_transfers, batches))
        elapsed = time.perf_counter() - t0
        counts = Counter(s for statuses in all_statuses for s in statuses)
        self.report.transfers_submitted = n
        self.report.transfer_outcomes = counts
        self.report.transfers_per_s = n / elapsed if elapsed > 0 else 0.0
        outcomes = ", ".join(f"{v} {k}" for k, v in counts.most_common())
        unexpected = {k: v for k, v in counts.items() if k not in ("created", "exceeds_credits")}
        self.check(
            "transfers",
            not unexpected,
            f"{n} in {len(batches)} batches of up to {self.batch_size}, {self.concurrency} in flight: "
            f"{outcomes}; {elapsed:.2f} s, [bold]{self.report.transfers_per_s:,.0f} transfers/s[/]",
        )

    def walk_through(self, bank: int, alice: int, bob: int, ledger: int) -> None:
        pending, post = TransferFlags.PENDING, TransferFlags.POST_PENDING_TRANSFER
        void, linked = TransferFlags.VOID_PENDING_TRANSFER, TransferFlags.LINKED

        # pending, then posted
        p1 = self.transfer(bank, bob, 500, ledger, flags=pending, timeout=3600)
        s1 = self.create_transfers([p1])
        s2 = self.create_transfers([self.transfer(bank, bob, 500, ledger, flags=post, pending_id=p1.id)])
        self.check(
            "pending",
            (s1, s2) == (["created"], ["created"]),
            f"reserved 500 for bob ({s1[0]}), then posted it ({s2[0]})",
        )

        # pending, then voided
        p2 = self.transfer(bank, bob, 300, ledger, flags=pending, timeout=3600)
        s1 = self.create_transfers([p2])
        s2 = self.create_transfers([self.transfer(bank, bob, 300, ledger, flags=void, pending_id=p2.id)])
        self.check(
            "void", (s1, s2) == (["created"], ["created"]), f"reserved 300 for bob ({s1[0]}), then voided it ({s2[0]})"
        )

        # an overdraft on an account whose debits must not exceed its credits
        s = self.create_transfers([self.transfer(alice, bob, 1_001, ledger)])
        self.check(
            "rejected",
            s == ["exceeds_credits"],
            f"alice (1000 in credits, debits_must_not_exceed_credits) pays 1001: {s[0]}",
        )

        # a linked chain whose middle link fails: nothing of it happens
        chain = [
            self.transfer(bank, alice, 100, ledger, flags=linked),
            self.transfer(alice, bob, 5_000, ledger, flags=linked),
            self.transfer(bob, bank, 1, ledger),
        ]
        s = self.create_transfers(chain)
        want = ["linked_event_failed", "exceeds_credits", "linked_event_failed"]
        try:
            stored = self._retry("lookup_transfers", lambda: self.c.lookup_transfers([t.id for t in chain]), 1)
            found = f"{len(stored)} of them stored"
        except DemoError as e:
            stored, found = None, str(e)
        self.check(
            "linked", s == want and stored == [], f"chain of 3, the middle one overdraws: {', '.join(s)}; {found}"
        )

        # the same transfer submitted twice is applied once
        t = self.transfer(bank, bob, 7, ledger)
        s1 = self.create_transfers([t])
        s2 = self.create_transfers([t])
        self.check(
            "idempotent",
            (s1, s2) == (["created"], ["exists"]),
            f"one transfer submitted twice with the same id: {s1[0]}, then {s2[0]}",
        )

    def escrow_walk_through(self, shards: list[int]) -> None:
        """Trades between a buyer and a seller on different shards (each trade on a third where there is one)."""
        ledger = ESCROW_LEDGER
        buyer_shard, seller_shard = shards[0], shards[1 % len(shards)]
        trade_shards = [shards[(2 + n) % len(shards)] for n in range(3)]
        mint, carol, dave = new_id(), self.new_id_on(buyer_shard), self.new_id_on(seller_shard)
        self.create_accounts([
            Account(id=mint, ledger=ledger, code=CODE_FUNDING),
            Account(id=carol, ledger=ledger, code=CODE_LIMITED, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account(id=dave, ledger=ledger, code=CODE_OPEN),
        ])
        self._retry("create_transfers", lambda: self.c.create_transfers([self.transfer(mint, carol, 10_000, ledger)]))

        def trade(trade_id: int, amount: int, ship_by_s: int = 3600) -> NewTrade:
            return NewTrade(trade_id, carol, dave, amount, ledger, fee_bps=250, ship_by_timeout_s=ship_by_s,
                            auto_confirm_timeout_s=7 * 86_400)

        def step(what: str, fn: Callable[[], Any]) -> str:
            return _status(self._retry(what, lambda: [fn()])[0])

        first, second, third = (self.new_id_on(s) for s in trade_shards)
        steps = [step("create_trade", lambda: self.c.create_trade(trade(first, 2_000))),
                 step("ship_trade", lambda: self.c.ship_trade(first)),
                 step("confirm_trade", lambda: self.c.confirm_trade(first)),
                 step("confirm_trade", lambda: self.c.confirm_trade(first))]
        t = self.c.lookup_trades([first])[0]
        self.check(
            "escrow",
            steps == ["ok", "ok", "ok", "exists"] and (t.released, t.fee) == (1_950, 50),
            f"carol buys for 2,000 ({steps[0]}), dave ships ({steps[1]}), carol confirms ({steps[2]}; again: "
            f"{steps[3]}): dave gets {t.released:,}, the platform {t.fee} (2.5 %)",
        )
        refund_id = new_id()
        steps = [step("create_trade", lambda: self.c.create_trade(trade(second, 1_000))),
                 step("refund_trade", lambda: self.c.refund_trade(second, refund_id, 400)),
                 step("open_dispute", lambda: self.c.open_dispute(second)),
                 step("resolve_dispute", lambda: self.c.resolve_dispute(second, buyer_amount=200))]
        t = self.c.lookup_trades([second])[0]
        self.check(
            "dispute",
            steps == ["ok"] * 4 and (t.state, t.refunded, t.released, t.fee) == (TradeState.CLOSED, 600, 390, 10),
            f"a 1,000 trade: 400 refunded, then a dispute split 200 / 400: carol gets {t.refunded:,} back, "
            f"dave {t.released:,}, the platform {t.fee}",
        )
        created = step("create_trade", lambda: self.c.create_trade(trade(third, 500, ship_by_s=1)))
        deadline = time.monotonic() + 20
        t = self.c.lookup_trades([third])[0]
        while t.state != TradeState.REFUNDED and time.monotonic() < deadline:
            time.sleep(0.25)
            t = self.c.lookup_trades([third])[0]
        self.check(
            "timer",
            created == "ok" and t.closed_by == TradeClosedBy.SHIP_BY_EXPIRED and t.refunded == 500,
            f"a trade not shipped within 1 s: {TradeState(t.state).name.lower()} by its timer "
            f"({(t.closed_at - t.created_at) / 1e9:.1f} s after it was paid)",
        )
        accounts = {a.id: a for a in self.c.lookup_accounts([carol, dave])}
        carol_net = accounts[carol].credits_posted - accounts[carol].debits_posted
        dave_net = accounts[dave].credits_posted - accounts[dave].debits_posted
        trades = self.c.lookup_trades([first, second, third])
        held, fees = sum(t.held for t in trades), sum(t.fee for t in trades)
        self.check(
            "escrow book",
            (carol_net, dave_net, held, fees) == (10_000 - 2_000 - 400, 1_950 + 390, 0, 60),
            f"carol holds {carol_net:,} of 10,000, dave {dave_net:,}, the platform {fees} in fees; {held} held",
        )

    def clearing_cycle(self) -> None:
        """Four banks clear payments among themselves under their caps, then the window is closed, netted and
        settled through the hub: each settlement account moves by exactly its bank's net."""
        from tidebank.client import ClearingItem, Participant

        ledger = CLEARING_LEDGER
        mint = new_id()
        banks = {name: new_id() for name in CLEARING_BANKS}
        accounts = {name: new_id() for name in CLEARING_BANKS}
        self.create_accounts([Account(id=mint, ledger=ledger, code=CODE_FUNDING)] + [
            Account(id=a, ledger=ledger, code=CODE_LIMITED, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
            for a in accounts.values()])
        self._retry("create_transfers", lambda: self.c.create_transfers(
            [self.transfer(mint, a, 100_000, ledger) for a in accounts.values()]))
        caps = dict(zip(CLEARING_BANKS, (20_000, 10_000, 10_000, 5_000), strict=True))
        registered = self.c.register_participants([
            Participant(banks[name], ledger=ledger, code=1, name=name, settlement_account_id=accounts[name],
                        net_debit_cap=caps[name]) for name in CLEARING_BANKS])
        rng = random.Random(self.rng.random())
        items, owed = [], Counter()
        for _ in range(400):
            payer, payee = rng.sample(CLEARING_BANKS, 2)
            items.append(ClearingItem(new_id(), payer_id=banks[payer], payee_id=banks[payee],
                                      amount=rng.randint(1, 300), ledger=ledger))
        results = self.c.submit_items(items)
        accepted = [i for i, r in zip(items, results, strict=True) if r.ok]
        for item in accepted:
            owed[item.payer_id] += item.amount
            owed[item.payee_id] -= item.amount
        refused = Counter(r.status.name for r in results if not r.ok)
        (d,) = self.c.lookup_participants([banks["bank-d"]])
        beyond = caps["bank-d"] - d.position + 1  # the smallest payment that takes bank-d past its cap
        over = self.c.submit_items([ClearingItem(new_id(), payer_id=banks["bank-d"], payee_id=banks["bank-a"],
                                                 amount=beyond, ledger=ledger)])[0]
        self.check(
            "clearing",
            all(r.ok for r in registered) and over.status.name == "exceeds_net_debit_cap",
            f"{len(CLEARING_BANKS)} banks (caps {', '.join(f'{c:,}' for c in caps.values())}) cleared "
            f"{len(accepted)} of {len(items)} payments in real time"
            + (f" ({', '.join(f'{n} {k}' for k, n in refused.items())})" if refused else "")
            + f"; {beyond:,} more from bank-d (position {d.position:+,}, cap {caps['bank-d']:,}): "
            + over.status.name,
        )
        before = {a.id: a.credits_posted - a.debits_posted for a in self.c.lookup_accounts(list(accounts.values()))}
        closed = self.c.close_window(ledger, self.c.list_windows(ledger)[-1].number)
        settled = self.c.settle_window(ledger, closed.window.number)
        after = {a.id: a.credits_posted - a.debits_posted for a in self.c.lookup_accounts(list(accounts.values()))}
        nets = {n.participant_id: n.net for n in settled.window.nets}
        moved_ok = all(before[accounts[name]] - after[accounts[name]] == owed[banks[name]] == nets.get(banks[name], 0)
                       for name in CLEARING_BANKS)
        shown = ", ".join(f"{name} {nets.get(banks[name], 0):+,}" for name in CLEARING_BANKS)
        self.check(
            "settlement",
            closed.ok and settled.ok and moved_ok and sum(nets.values()) == 0,
            f"window {closed.window.number} closed and netted ({shown}; sum 0), settled in one atomic chain "
            f"through the hub: each settlement account moved by exactly its net",
        )

    def verify_balances(self, ids: list[int]) -> None:
        found: list[Any] = []
        for i in range(0, len(ids), BATCH_ITEMS_MAX):
            chunk = ids[i : i + BATCH_ITEMS_MAX]
            found += self._retry("lookup_accounts", lambda chunk=chunk: self.c.lookup_accounts(chunk), 1)
        totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        wrong = []
        for a in found:
            tot = totals[a.ledger]
            tot[0] += a.debits_posted
            tot[1] += a.credits_posted
            tot[2] += a.debits_pending
            tot[3] += a.credits_pending
            want = (self.debits[a.id], self.credits[a.id], 0, 0)
            have = (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
            if have != want:
                wrong.append(a.id)
        for ledger in sorted(totals):
            d, c, dp, cp = totals[ledger]
            self.check(
                "balances",
                d == c and dp == cp,
                f"ledger {ledger}: debits {d:,} {'==' if d == c else '!='} credits {c:,} posted, "
                f"{dp:,} {'==' if dp == cp else '!='} {cp:,} pending",
            )
        missing = len(ids) - len(found)
        detail = f"{len(found)} accounts read back, each holds what the acknowledged transfers say"
        if missing or wrong:
            detail = f"{missing} accounts missing, {len(wrong)} with unexpected balances (e.g. {wrong[:3]})"
        self.check("model", not missing and not wrong, detail)


def _others(counts: Counter, expected: str) -> str:
    rest = ", ".join(f"{v} {k}" for k, v in counts.items() if k != expected)
    return f" (also: {rest})" if rest else ""


def run_demo(
    endpoints: Sequence[str],
    *,
    accounts: int = 1000,
    transfers: int = 20000,
    batch_size: int = 1000,
    concurrency: int = 4,
    seed: int | None = None,
    timeout_s: float = 10.0,
    console: Console | None = None,
    tls: ClientTls | None = None,
) -> DemoReport:
    """Run the demo workload against a cluster and print what it did. The report's
    `ok` is False when any step did not turn out as the ledger's rules say."""
    console = console or Console(highlight=False)
    if accounts < 4:
        raise DemoError("the demo needs at least 4 accounts")
    t0 = time.perf_counter()
    with Client(list(endpoints), timeout_s=timeout_s, tls=tls) as client:
        report = _Demo(client, random.Random(seed), console, batch_size, concurrency).run(accounts, transfers)
    verdict = (
        "[green]demo OK[/]"
        if report.ok
        else "[red]demo FAILED[/]: " + ", ".join(c.name for c in report.checks if not c.ok)
    )
    console.print(f"{verdict} ({time.perf_counter() - t0:.1f} s)")
    return report
