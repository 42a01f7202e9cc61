"""The files of `specrej-local batch`: reading IN, answering one entry, writing OUT. Both the
single-process batch (`batch`) and the Ray one (`ray_batch`) use these.

IN, by its file name:

    *.jsonl  one JSON object a line: {"id", "prompt", optional settings for this prompt alone}
             (the settings of `make_settings`, named as in the API: "n", "alpha", "method",
             "max_tokens", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "system",
             "kv_budget", "keep_at_least"; other keys are left alone); "id" defaults to the line
             number, and "instruction" (plus a non-empty "input" after a blank line) or
             "messages" (a conversation, a list of {"role", "content"} turns) stands in for a
             missing "prompt"
    *.json   a JSON list of such objects (or of plain strings), e.g. an AlpacaFarm prompt set;
             "id" defaults to the item's position, counted from 1
    other    plain text, one prompt a line, id = line number; blank lines are skipped

OUT is JSON Lines, one line per prompt, written, flushed and fsync'ed the moment it finishes:

    {"id", "text", "reward", ...}   the fields of `run --json`, plus the id
    {"id", "line", "error"}         a bad input line or a failing prompt ("id" null when the line
                                    is not JSON; "line" is the line, or the item of a JSON list)

Resume: run the same command again. Ids with an answer in OUT are skipped; everything else runs,
errors included: their old error lines are removed first, so an id never gets a second answer
line. An entry of IN that cannot be read (a duplicate id among them) gets its error line again
on every run, so OUT always reports it exactly once. A last line without its newline (a run
killed mid-write) is dropped and redone the same way. Ctrl-C, at any moment, exits 130 with
everything finished on disk.

OUT must be a regular file (or not exist yet), and not IN under another name. Through a symlink,
OUT is the file it points to: it is locked, read and rewritten there. Two advisory locks keep a
second batch on the same OUT from starting: one on OUT.lock, next to that file (it names the
holder's pid), and one on the file itself, so that a hard link to OUT, another name of the same
file, is the same batch too. An OUT this run created and wrote nothing to is removed at the end.
"""
import codecs
import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..decoder import Interrupted
from ..errors import BadInput, SpecRejError
from ..interrupts import held_back
from ..messages import check_messages
from ..text import not_text
from .options import out_of_range, result_record

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so nothing stops two runs on one OUT
    fcntl = None

# Per-prompt settings an input object may give, overriding the command's options: every setting
# of the API's make_settings (a test holds them equal), so none is silently dropped. STRINGS: a
# string or a list of strings.
STRINGS = list
OVERRIDES = {"n": int, "alpha": float, "method": str, "max_tokens": int, "temperature": float, "top_k": int,
             "top_p": float, "min_p": float, "seed": int, "stop": STRINGS, "system": str, "kv_budget": int,
             "keep_at_least": int, "ignore_eos": bool}


class BatchFileError(SpecRejError):
    """IN cannot be read, or OUT cannot be written, is damaged or is in use by another batch."""


@dataclass
class Item:
    """One prompt of IN, or (with `error`) an entry that could not be read as one."""
    line: int                 # line number in IN, or position in a JSON list (from 1)
    where: str                # "line 3" / "item 3", for messages
    id: object = None         # str or int; None when unknown (a line that is not JSON)
    prompt: str = ""
    settings: dict = field(default_factory=dict)
    error: Optional[str] = None


# --- reading IN ----------------------------------------------------------------------------
def read_items(path) -> list:
    """Every entry of IN, in order. Raises BatchFileError when the file as a whole is unusable;
    a bad line only becomes an Item with an `error`."""
    path = Path(path)
    try:
        if not path.is_file():  # a device or a pipe (/dev/zero) could fill memory without end
            raise BatchFileError(f"{path} is not a regular file: give a file of prompts")
        data = path.read_bytes()
    except OSError as e:
        raise BatchFileError(f"cannot read {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    items = _json_list(path, data) if suffix == ".json" else list(_lines(data, jsonl=suffix == ".jsonl"))
    first = {}
    for it in items:
        if it.error is None and it.id in first:
            it.error = f"{it.where}: duplicate id {it.id!r} (first at {first[it.id]})"
        elif it.error is None:
            first[it.id] = it.where
    return items


def _lines(data: bytes, jsonl: bool) -> Iterator[Item]:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for number, raw in enumerate(data.splitlines(), 1):
        where = f"line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Item(number, where, None if jsonl else number,
                       error=f"{where} is not UTF-8 text (byte {e.start + 1} of the line)")
            continue
        if not text.strip():
            continue
        if not jsonl:
            yield Item(number, where, number, prompt=text)
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            yield Item(number, where, error=f"{where}: invalid JSON ({msg})")
            continue
        yield _from_object(obj, number, where)


def _json_list(path: Path, data: bytes) -> list:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BatchFileError(f"{path} is not UTF-8 text (line {line})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BatchFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(doc, list):
        raise BatchFileError(f"{path} must hold a JSON list of prompts, not a JSON {type(doc).__name__}")
    return [_from_string(obj, i) if isinstance(obj, str) else _from_object(obj, i, f"item {i}")
            for i, obj in enumerate(doc, 1)]


def _from_string(prompt: str, number: int) -> Item:
    where = f"item {number}"
    problem = not_text(prompt)
    if problem:
        return Item(number, where, number, error=f"{where} {problem}")
    return Item(number, where, number, prompt=prompt)


def _from_object(obj, number: int, where: str) -> Item:
    def bad(problem, id=None):
        return Item(number, where, id, error=f"{where}: {problem}")

    if not isinstance(obj, dict):
        return bad(f"expected a JSON object with a \"prompt\", got {json.dumps(obj)[:40]}")
    id = obj.get("id", number)
    if isinstance(id, bool) or not isinstance(id, (int, str)):
        return bad(f"\"id\" must be a string or an integer, got {json.dumps(id)[:40]}")
    prompt = obj.get("prompt")
    if prompt is None and "instruction" in obj:  # Alpaca layout: instruction, optional input
        prompt, extra = obj["instruction"], obj.get("input") or ""
        if not isinstance(prompt, str) or not isinstance(extra, str):
            return bad("\"instruction\" and \"input\" must be strings", id)
        prompt = f"{prompt}\n\n{extra}" if extra.strip() else prompt
    if prompt is None and "messages" in obj:  # a conversation, rendered with the chat template
        try:
            prompt = check_messages(obj["messages"])
        except BadInput as e:
            return bad(f"\"messages\": {e}", id)
    elif prompt is None:
        return bad("no \"prompt\" (or \"instruction\")", id)
    elif not isinstance(prompt, str):
        return bad(f"\"prompt\" must be a string, got {json.dumps(prompt)[:40]}", id)
    for key in ("prompt", "instruction", "input", "system"):  # every string that can reach the model
        problem = isinstance(obj.get(key), str) and not_text(obj[key])
        if problem:
            return bad(f"\"{key}\" {problem}", id)
    settings = {}
    for key, kind in OVERRIDES.items():
        value = obj.get(key)
        if value is None:  # absent or null: the command's option
            continue
        if not _is_a(kind, value):
            noun = {int: "an integer", float: "a number", str: "a string", STRINGS: "a string or a list of strings",
                    bool: "true or false"}
            return bad(f"\"{key}\" must be {noun[kind]}, got {json.dumps(value)[:40]}", id)
        if kind in (int, float):
            problem = out_of_range(int(value) if kind is int else value)
        else:  # strings reaching the model ("system" is checked above with the prompt)
            problem = kind is STRINGS and next((p for p in map(not_text, _strings(value)) if p), None)
        if problem:
            return bad(f"\"{key}\" {problem}", id)
        settings[key] = kind(value) if kind in (int, float) else value
    return Item(number, where, id, prompt=prompt, settings=settings)


def _strings(value) -> list:
    return [value] if isinstance(value, str) else value


def _is_a(kind, value) -> bool:
    """Whether a JSON value can serve as `kind`: 3.0 is an integer; true is not a number."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is STRINGS:
        return isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind is float or isinstance(value, int) or value.is_integer()


# --- writing OUT ---------------------------------------------------------------------------
class ResultsFile:
    """OUT opened for appending, under an advisory lock; `done` holds the ids answered already,
    `answered` and `failed` count the lines this run has written.

    OUT may be reached through symlinks: the lock, the reading and the rewrite all act on the file
    it resolves to (`self.file`), so two names of one file are one batch, and a symlink stays one.
    A hard link is another name of the same inode, which is locked as well (`_lock_file`)."""

    def __init__(self, path):
        self.path = Path(path)  # as the user wrote it, for messages
        self.file = Path(os.path.realpath(self.path))
        self.lock_path = self.file.with_name(self.file.name + ".lock")
        self._fd = self.f = None
        self.created = False  # whether this run made OUT (removed again if it stays empty)
        self.answered = self.failed = 0
        try:
            refuse_special_file(self.path)
            with held_back():  # a lock file created is a lock file recorded, for close() to remove (Ctrl-C, SIGTERM)
                self._lock()
                self.created = not self.file.exists()
                self._lock_file()
            if self.created:
                _fsync_dir(self.file.parent)
            self.done = self._recover()
        except OSError as e:
            self.close()
            raise BatchFileError(f"cannot write {self.path}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    def _lock(self):
        if fcntl is None:
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f"another batch (pid {pid})" if pid.isdigit() else "another batch"
                raise BatchFileError(f"{who} is writing {self.path}; wait for it to end or choose "
                                     f"another -o (lock file {self.lock_path})") from None
            # The last holder may have deleted the lock file between our open and our lock: then
            # we hold a lock nobody else can see, so start again on the file now at that path.
            if _same_file(fd, self.lock_path):
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _lock_file(self):
        """Open OUT for appending and lock the file itself: a batch on a hard link to OUT, which
        has a lock file of its own name, still finds this inode locked."""
        while True:
            f = open(self.file, "ab")
            if fcntl is None:
                break
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise BatchFileError(f"another batch is writing {self.path} under another name (a hard link "
                                     "to the same file); wait for it to end or choose another -o") from None
            if _same_file(f.fileno(), self.file):
                break
            f.close()  # the holder replaced OUT (a resume's rewrite) while we waited: lock the new one
        self.f = f

    def _unlock(self):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)  # while still locked, so nobody can have locked it meanwhile
            os.close(self._fd)
            self._fd = None

    def _recover(self) -> set:
        """Ids answered in OUT. Error lines and a last line cut off mid-write are removed (those
        prompts run again); any other unreadable line stops the run rather than lose data."""
        try:
            data = self.file.read_bytes()
        except FileNotFoundError:
            return set()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" unless the last line has no newline: a write cut off by a kill
        keep, done, drop = [], set(), bool(tail)
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                drop = True
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or isinstance(rec.get("id"), (bool, list, dict, float)):
                raise BatchFileError(f"{self.path} line {number} is not a batch result line; "
                                     "remove that line (or choose another -o) and run again")
            if "error" in rec:
                drop = True
                continue
            done.add(rec["id"])
            keep.append(raw)
        if drop:
            self._rewrite(keep)
        return done

    def _rewrite(self, lines):
        """Replace OUT by `lines` atomically: a kill at any moment leaves the old or the new file.
        The new file is locked before it takes OUT's name, and appended to from then on; when
        OUT cannot be rewritten, the temporary file goes."""
        tmp = self.file.with_name(self.file.name + ".tmp")
        f = open(tmp, "wb")
        try:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a new inode: nobody else holds it
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            with contextlib.suppress(OSError):  # closing flushes again, and fails again
                f.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.f.close()
        self.f = f
        _fsync_dir(self.file.parent)

    def append(self, record: dict):
        """Write one result line and make sure it is on disk before going on."""
        data = (json.dumps(record) + "\n").encode()
        try:
            with held_back():  # the line and its count, or neither
                self.f.write(data)
                self.f.flush()
                os.fsync(self.f.fileno())
                if "error" in record:
                    self.failed += 1
                else:
                    self.answered += 1
        except OSError as e:
            raise BatchFileError(f"cannot write {self.path}: {e.strerror or e}") from None

    def close(self):
        """Release OUT; one this run created and wrote nothing to (a run refused before its first
        line) is removed rather than left empty."""
        if getattr(self, "f", None) is not None:
            fd = self.f.fileno()
            with contextlib.suppress(OSError):
                if self.created and os.fstat(fd).st_size == 0 and _same_file(fd, self.file):
                    os.unlink(self.file)  # still locked, so no other batch has started on it
            self.f.close()
            self.f = None
        self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refuse_special_file(path: Path):
    """OUT must be a regular file (or not exist yet): reading a FIFO or a terminal back for a
    resume would wait forever, and a directory or a device cannot hold results."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing (created later) or unreachable (reported when it is opened)
        return
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
        raise BatchFileError(f"{path} is {kind}, not a regular file; choose a file for -o")


def refuse_input_as_output(source: Path, out: Path):
    """OUT must not be IN under another name (a symlink or a hard link): a resume would rewrite it."""
    with contextlib.suppress(OSError):  # OUT missing: it cannot be IN
        if source.samefile(out):
            raise BatchFileError(f"the output file {out} is the input file; choose another -o")


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file descriptor `fd` is the file now at `path`."""
    try:
        st, mine = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _fsync_dir(path: Path):
    """Make a file's creation or rename durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the loop ------------------------------------------------------------------------------
def pending(items, out: ResultsFile) -> list:
    """The items still to do: everything whose id has no answer in OUT, and every entry IN has
    wrong. Such an entry can have an answered id (a duplicate id is answered by its first
    occurrence), yet its error line, removed from OUT with the others, must be written again."""
    return [it for it in items if it.error or it.id not in out.done]


def answer_one(s, it: Item, options: dict, generator: str, reward) -> dict:
    """The OUT line of one item: its answer from the loaded SpecRej `s`, or its error line."""
    if it.error:
        return error_record(it, it.error)
    opts = {**options, **it.settings}
    try:
        outcome = s.generate(it.prompt, **opts)
    except Interrupted:
        raise
    except SpecRejError as e:
        outcome = e
    return outcome_record(it, outcome, opts, generator, reward)


def outcome_record(it: Item, outcome, opts: dict, generator: str, reward) -> dict:
    """The OUT line of a prompt that ran: its Result, or the SpecRejError it failed with."""
    if isinstance(outcome, SpecRejError):
        return error_record(it, f"{it.where}: {' '.join(str(outcome).split())}")
    return dict(id=it.id, **result_record(outcome, generator, reward, opts["seed"]))


def error_record(it: Item, error: str) -> dict:
    return dict(id=it.id, line=it.line, error=error)


def answer_all(s, items, out: ResultsFile, options: dict, generator: str, reward,
               concurrent: Optional[int] = 1) -> Iterator[dict]:
    """Answer each item with the loaded SpecRej `s`, append its line to OUT as soon as it is
    ready, and yield it. With `concurrent` other than 1 (None: the API's default), that many
    prompts are decoded at once (`SpecRej.generate_many`) and each line is written the moment
    its prompt finishes. Ctrl-C (Interrupted / KeyboardInterrupt) abandons the prompts in progress."""
    if concurrent == 1:
        for it in items:
            rec = answer_one(s, it, options, generator, reward)
            out.append(rec)
            yield rec
        return
    good = [it for it in items if not it.error]
    for it in items:
        if it.error:
            rec = error_record(it, it.error)
            out.append(rec)
            yield rec
    if not good:  # only unreadable entries were left: no model was loaded for them
        return
    requests = [{("messages" if isinstance(it.prompt, list) else "prompt"): it.prompt, **it.settings} for it in good]
    for k, outcome in s.generate_many(requests, concurrent=concurrent, **options):
        it = good[k]
        if isinstance(outcome, Interrupted):
            raise outcome
        rec = outcome_record(it, outcome, {**options, **it.settings}, generator, reward)
        out.append(rec)
        yield rec
