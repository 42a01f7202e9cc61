"""Fair prefill's books (llama/prefill.py), without a model: how big the next piece of a prompt
is, and when it may be read beside other prompts' answers."""
import pytest

from specrej_local.llama.prefill import MIN_PIECE, Prefill
from specrej_local.llama.prefix_cache import SAME_ROWS, small_tail


def pieces(p: Prefill, length: int, batch: int, start: int = 0, seconds_per_token: float = 0.001) -> list:
    """The (start, end) of each piece of a whole read, each piece taking `seconds_per_token`."""
    out, read = [], start
    while read < length:
        end = p.piece_end(read, length, batch)
        out.append((read, end))
        p.read(end - read, (end - read) * seconds_per_token)
        read = end
    return out


def test_by_default_a_prompt_is_read_in_whole_chunks_whenever_asked():
    p = Prefill()
    assert pieces(p, 1100, 512) == [(0, 512), (512, 1024), (1024, 1100)]
    assert pieces(Prefill(), 1100, 512, start=300) == [(300, 512), (512, 1024), (1024, 1100)]  # after a cached prefix
    p.read(512, 5.0)
    assert p.may_read(others_generating=True)  # a chunk per shared step, whatever it took


def test_read_fairly_the_first_piece_is_small_then_pieces_take_about_piece_s():
    p = Prefill(fair=True, piece_s=0.5)
    assert p.piece_end(0, 3000, 512) == MIN_PIECE  # no rate measured yet
    p.read(MIN_PIECE, MIN_PIECE * 0.002)           # 2 ms a token: 250 tokens in half a second
    assert p.piece_end(MIN_PIECE, 3000, 512) == MIN_PIECE + 192  # rounded down to whole SAME_ROWS
    p.read(MIN_PIECE, MIN_PIECE * 0.00001)         # a fast machine: a whole chunk at most
    assert p.piece_end(512, 3000, 512) == 1024
    p.read(MIN_PIECE, MIN_PIECE * 1.0)             # a slow one: never under MIN_PIECE tokens
    assert p.piece_end(1024, 3000, 512) == 1024 + MIN_PIECE
    assert p.piece_end(1024 + 340, 3000, 512) == 1536  # the rest of the chunk: no remainder under SAME_ROWS


@pytest.mark.parametrize("length", [40, 64, 100, 511, 512, 530, 600, 1023, 1090, 3177])
@pytest.mark.parametrize("start", [0, 1, 130, 448])
@pytest.mark.parametrize("seconds_per_token", [1.0, 0.003, 0.0011, 0.0001])
def test_pieces_keep_every_row_in_the_kind_of_micro_batch_a_fresh_read_uses(length, start, seconds_per_token):
    # A fresh read: chunks of `batch`, the last one small when under SAME_ROWS rows. Pieces split
    # only the big chunks, into parts of SAME_ROWS rows or more, and read a small tail whole.
    batch = 512
    if start >= length:
        return
    fresh_tail = small_tail(length, batch)
    got = pieces(Prefill(fair=True, piece_s=0.4), length, batch, start, seconds_per_token)
    assert got[0][0] == start and got[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))  # contiguous
    for a, b in got:
        assert b <= (a - a % batch + batch)  # never across the end of a fresh read's chunk
        if a >= fresh_tail:
            assert (a, b) == (max(start, fresh_tail), length)  # the small tail, whole
        elif a % batch == 0 or a != start:  # the first piece after a prefix may be the prefix's remainder
            assert b - a >= SAME_ROWS


def test_a_short_prompt_read_in_one_small_piece_does_not_set_the_rate():
    p = Prefill(fair=True, piece_s=0.5)
    p.read(MIN_PIECE, MIN_PIECE * 0.004)  # 4 ms a token: 125 tokens in half a second
    p.read(6, 0.01)                      # 6 tokens in 10 ms: mostly the decode's fixed cost
    assert p.piece_end(1024, 3000, 512) == 1024 + MIN_PIECE
    assert p.owed > MIN_PIECE * 0.004     # though its time is still owed to the answers generating


def test_beside_generating_answers_reading_takes_its_share_of_the_time():
    p = Prefill(fair=True, share=0.5)
    assert p.may_read(others_generating=True)
    p.read(128, 0.6)
    assert not p.may_read(others_generating=True)  # the others are owed 0.6 s of steps
    p.stepped(0.25)
    p.stepped(0.25)
    assert not p.may_read(others_generating=True)
    p.stepped(0.1)
    assert p.may_read(others_generating=True)
    p.read(128, 0.6)
    assert p.may_read(others_generating=False)  # nobody to wait for: read on, and owe nothing
    assert p.may_read(others_generating=True)


def test_a_smaller_share_makes_reading_wait_longer():
    p = Prefill(fair=True, share=0.25)
    p.read(128, 1.0)
    p.stepped(2.9)
    assert not p.may_read(others_generating=True)  # 1 s of reading is owed 3 s of steps
    p.stepped(0.2)
    assert p.may_read(others_generating=True)
