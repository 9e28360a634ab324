"""The selectors on their own: which ring slots uniform, prioritized, FIFO and LIFO reads pick,
with what probability, and what they checkpoint."""

import numpy as np
import pytest

from harvest.rollout.replay.selectors import Prioritized, Queue, Uniform, make_selector


@pytest.mark.parametrize(
    "name, kind, newest_first",
    [("uniform", Uniform, None), ("prioritized", Prioritized, None), ("fifo", Queue, False), ("lifo", Queue, True)],
)
def test_make_selector_builds_the_named_sampler(name, kind, newest_first):
    selector = make_selector(name, capacity=8)
    assert type(selector) is kind and selector.capacity == 8
    if newest_first is not None:
        assert selector.newest_first is newest_first


def test_make_selector_names_the_unknown_sampler_and_the_known_ones():
    with pytest.raises(ValueError, match=r"replay.sampler: 'random' is not a known sampler; expected uniform, "):
        make_selector("random", capacity=8)


def test_uniform_draws_only_stored_slots_across_the_wrap_with_equal_probability():
    selector = Uniform(capacity=10)
    slots, probabilities = selector.select(40_000, np.random.default_rng(0), oldest_seq=8, next_seq=12)
    assert set(slots.tolist()) == {8, 9, 0, 1}  # sequence numbers 8..11 in a ring of 10
    np.testing.assert_allclose(np.bincount(slots, minlength=10)[[8, 9, 0, 1]] / 40_000, 0.25, atol=0.01)
    assert (probabilities == 0.25).all()
    assert selector.mass(8, 12) == 4.0 and selector.nbytes == 0


def test_prioritized_new_rows_enter_at_the_largest_priority_seen_so_far():
    selector = Prioritized(capacity=4, alpha=0.5, eps=0.0)
    selector.inserted(np.array([0, 1]))
    np.testing.assert_allclose(selector.tree.get([0, 1]), [1.0, 1.0])  # max_priority starts at 1
    selector.update(np.array([0, 1]), np.array([-9.0, 4.0]))  # |td|: the sign does not matter
    assert selector.max_priority == 9.0
    np.testing.assert_allclose(selector.tree.get([0, 1]), [3.0, 2.0])  # 9^0.5, 4^0.5
    selector.inserted(np.array([2]))
    assert selector.tree.get([2])[0] == pytest.approx(3.0)
    assert selector.mass(0, 3) == pytest.approx(8.0)


def test_prioritized_draws_in_proportion_to_p_alpha_and_returns_those_probabilities():
    selector = Prioritized(capacity=4, alpha=0.7, eps=1e-6)
    selector.inserted(np.arange(4))
    td_errors = np.array([0.5, 1.0, 2.0, 4.0])
    selector.update(np.arange(4), td_errors)
    expected = (td_errors + 1e-6) ** 0.7 / ((td_errors + 1e-6) ** 0.7).sum()
    slots, probabilities = selector.select(100_000, np.random.default_rng(1), 0, 4)
    np.testing.assert_allclose(np.bincount(slots, minlength=4) / 100_000, expected, atol=0.004)
    np.testing.assert_allclose(probabilities, expected[slots], rtol=1e-9)


def test_prioritized_stratified_draws_take_each_equal_row_once():
    selector = Prioritized(capacity=8, alpha=1.0, eps=0.0)
    selector.inserted(np.arange(8))
    slots, _ = selector.select(8, np.random.default_rng(2), 0, 8)
    assert sorted(slots.tolist()) == list(range(8))  # one draw per stratum of equal mass


def test_prioritized_evicted_rows_are_never_drawn():
    selector = Prioritized(capacity=4, alpha=1.0, eps=0.0)
    selector.inserted(np.arange(4))
    selector.evicted(np.array([0, 2]))
    slots, probabilities = selector.select(1000, np.random.default_rng(3), 0, 4)
    assert set(slots.tolist()) == {1, 3} and (probabilities == 0.5).all()
    assert selector.mass(0, 4) == 2.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_prioritized_refuses_td_errors_that_are_not_finite_and_keeps_its_priorities(bad):
    selector = Prioritized(capacity=2, alpha=1.0, eps=0.0)
    selector.inserted(np.arange(2))
    with pytest.raises(ValueError, match="update_priorities: TD errors must be finite"):
        selector.update(np.arange(2), np.array([2.0, bad]))
    np.testing.assert_array_equal(selector.tree.get([0, 1]), [1.0, 1.0])
    assert selector.max_priority == 1.0


def test_prioritized_state_restored_into_a_fresh_selector_draws_the_same_rows():
    selector = Prioritized(capacity=4, alpha=0.6, eps=1e-3)
    selector.inserted(np.arange(3))
    selector.update(np.array([0, 2]), np.array([3.0, 0.25]))
    slots = np.arange(3)
    rows, scalars = selector.row_state(slots), selector.scalar_state()
    assert scalars == {"max_priority": pytest.approx(3.001)}
    fresh = Prioritized(capacity=4, alpha=0.6, eps=1e-3)
    fresh.restore(slots, rows, scalars)
    assert fresh.mass(0, 3) == pytest.approx(selector.mass(0, 3))
    np.testing.assert_array_equal(
        fresh.select(50, np.random.default_rng(4), 0, 3)[0], selector.select(50, np.random.default_rng(4), 0, 3)[0]
    )


def test_fifo_reads_the_oldest_rows_first_each_once_across_the_wrap():
    selector = Queue(capacity=5, newest_first=False)
    selector.inserted(np.arange(5))
    rng = np.random.default_rng(0)
    first, probabilities = selector.select(3, rng, oldest_seq=3, next_seq=8)  # slots 3, 4, 0, 1, 2
    assert first.tolist() == [3, 4, 0] and (probabilities == 1.0).all()
    assert selector.mass(3, 8) == 2.0
    assert selector.select(3, rng, 3, 8)[0].tolist() == [1, 2]  # only what is left
    assert selector.select(3, rng, 3, 8)[0].tolist() == []
    selector.inserted(np.array([3]))  # a new row overwrote slot 3: it can be read again
    assert selector.select(3, rng, 4, 9)[0].tolist() == [3]


def test_lifo_reads_the_newest_rows_first():
    selector = Queue(capacity=5, newest_first=True)
    selector.inserted(np.arange(5))
    rng = np.random.default_rng(0)
    assert selector.select(2, rng, 0, 5)[0].tolist() == [4, 3]
    assert selector.select(10, rng, 0, 5)[0].tolist() == [2, 1, 0]


def test_queue_state_restores_which_rows_were_taken():
    selector = Queue(capacity=4, newest_first=False)
    selector.inserted(np.arange(4))
    selector.select(2, np.random.default_rng(0), 0, 4)
    rows = selector.row_state(np.arange(4))
    assert rows["taken"].tolist() == [True, True, False, False]
    fresh = Queue(capacity=4, newest_first=False)
    fresh.restore(np.arange(4), rows, selector.scalar_state())
    assert fresh.select(4, np.random.default_rng(0), 0, 4)[0].tolist() == [2, 3]
    assert fresh.nbytes == 4  # one bool per slot
