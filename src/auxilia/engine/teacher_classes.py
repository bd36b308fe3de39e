"""A teacher's classes are the student's: its logits are paired with the student's classes by
name, never by position alone.

A teacher run records its class names (its checkpoint's ``data.classes``); a teacher whose names
are unknown (``teacher.model``, a Python-API module) may declare them as a list in
``teacher.classes``. Names equal to the student's in another order give a permutation; names
that differ are refused unless ``teacher.classes`` pairs them (student class -> teacher class).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import yaml

from auxilia.config import ConfigError
from auxilia.yamlio import load as load_yaml

SHOWN = 12
"""Class names a message lists before it says how many more there are."""
RETRAIN = "distil a teacher trained on the student's classes"
"""The fix when no pairing of the names can teach every student class."""


def class_index(student: Sequence[str], teacher: Sequence[str],
                pairs: Mapping[str, str] | None, source: str, declared: bool = False
                ) -> list[int] | None:
    """For each student class, the index of the teacher's logit that teaches it.

    Args:
        student: the student's class names, in its order.
        teacher: the teacher's class names, in the order of its logits.
        pairs: ``teacher.classes`` as a mapping (student class -> teacher class), or None to
            pair the classes by name.
        source: the teacher, for messages.
        declared: ``teacher`` is ``teacher.classes`` given as a list (the teacher records no
            names): a message's fix is then a corrected list, as no mapping may go with it.

    Returns:
        None when the teacher's logits are in the student's order already, else the indices
        (a permutation, or with ``pairs`` a selection: teacher classes no student class pairs
        with are dropped).

    Raises:
        ConfigError: the names differ and ``pairs`` does not pair them, or ``pairs`` names a
            class that does not exist or pairs two student classes with one teacher class.
            A fix the message spells out is accepted when followed.
    """
    if pairs is None:
        if list(student) == list(teacher):
            return None
        if sorted(student) == sorted(teacher):  # the same classes in another order
            return [list(teacher).index(name) for name in student]
        raise ConfigError(_differ_message(student, teacher, source, declared))
    wanted = _paired(student, teacher, pairs, source)
    index = [list(teacher).index(name) for name in wanted]
    return None if index == list(range(len(teacher))) else index


def _paired(student: Sequence[str], teacher: Sequence[str], pairs: Mapping[str, str],
            source: str) -> list[str]:
    """The teacher class of each student class, checked: names, then sharing, then gaps (so
    the fix the gaps' message gives is a whole valid mapping)."""
    unknown = [name for name in pairs if name not in student]
    if unknown:
        raise ConfigError(f"teacher.classes pairs {unknown[0]!r}, which is not a class of the "
                          f"student; its classes: {shown_names(student)}")
    for name, t_name in pairs.items():
        if t_name not in teacher:
            raise ConfigError(f"teacher.classes pairs student class {name!r} with {t_name!r}, "
                              f"which is not a class of the teacher ({source}); its classes: "
                              f"{shown_names(teacher)}")
    wanted = [pairs.get(name, name) for name in student]
    for t_name in wanted:
        both = [s for s, t in zip(student, wanted, strict=True) if t == t_name]
        if len(both) > 1:
            raise ConfigError(f"student classes {both[0]!r} and {both[1]!r} both pair with the "
                              f"teacher's class {t_name!r}; pair each student class with its "
                              "own teacher class in teacher.classes")
    missing = [s for s, t in zip(student, wanted, strict=True) if t not in teacher]
    if missing:
        raise ConfigError(_missing_message(missing, teacher, wanted, pairs, source))
    return wanted


def _missing_message(missing: list[str], teacher: Sequence[str], wanted: list[str],
                     pairs: Mapping[str, str], source: str) -> str:
    """Student classes without a teacher class: the whole mapping that pairs them too, or
    why none can."""
    free = [name for name in teacher if name not in wanted]  # no student class pairs with them
    head = (f"student class {missing[0]!r} has no class in the teacher ({source}) and "
            "teacher.classes pairs it with none")
    if len(free) < len(missing):
        fix = (f"{len(missing)} student classes have none, and {len(free)} of the teacher's "
               f"are left to pair them with: {RETRAIN}")
    else:
        fix = (f"pair {'it' if len(missing) == 1 else 'them'} with the teacher's unpaired "
               f"classes ({shown_names(free)}) in teacher.classes, e.g. "
               + _mapping({**pairs, **dict(zip(missing, free, strict=False))}))
    return f"{head}: {fix}; the teacher's classes: {shown_names(teacher)}"


def _differ_message(student: Sequence[str], teacher: Sequence[str], source: str,
                    declared: bool) -> str:
    """One line: both class lists (or the names that differ), why it matters, the fix."""
    only_s = [name for name in student if name not in teacher]
    only_t = [name for name in teacher if name not in student]
    if len(student) <= SHOWN and len(teacher) <= SHOWN:
        which = (f"the teacher's classes are {shown_names(teacher)}, the student's "
                 f"{shown_names(student)}")
    else:  # long lists: only the names that differ
        which = ", ".join(filter(None, [
            only_s and f"the student's {shown_names(only_s)} are not the teacher's",
            only_t and f"the teacher's {shown_names(only_t)} are not the student's"]))
    return (f"the teacher ({source}) was trained on other classes than the student: {which}; "
            f"its logits would teach the wrong classes; "
            f"{_differ_fix(student, teacher, only_s, only_t, declared)}")


def _differ_fix(student: Sequence[str], teacher: Sequence[str], only_s: list[str],
                only_t: list[str], declared: bool) -> str:
    """What to do when the names differ: a fix that is accepted as given, or retraining."""
    if not only_t:
        return f"it has no logit for {shown_names(only_s)}: {RETRAIN}"
    if len(only_s) > len(only_t):
        return (f"it has {len(teacher)} classes for the student's {len(student)}, so no "
                f"pairing gives each student class a logit: {RETRAIN}")
    if declared:  # no mapping may go with a list: only the list itself can change
        if len(only_s) < len(only_t):
            return ("it has logits for classes the student lacks, which a list of its names "
                    f"in teacher.classes cannot drop: {RETRAIN}")
        renamed = dict(zip(only_t, only_s, strict=True))
        return (f"if they are the same classes, name them as the student does: "
                f"{_listing([renamed.get(n, n) for n in teacher], renamed)}, or {RETRAIN}")
    if not only_s:
        return (f"{RETRAIN}, or pair them explicitly to drop the teacher's others, e.g. "
                f"{_mapping({student[0]: student[0]})}")
    return (f"if they are the same classes, pair them with "
            f"{_mapping(dict(zip(only_s, only_t, strict=False)))} (student class: teacher "
            f"class), or {RETRAIN}")


def _mapping(pairs: Mapping[str, str]) -> str:
    """``teacher.classes={a: b, ...}``, or past :data:`SHOWN` pairs what to write in it."""
    if len(pairs) > SHOWN:
        return f"a mapping teacher.classes of the pairs {_arrows(pairs)}"
    return "teacher.classes={" + ", ".join(f"{_text(s)}: {_text(t)}" for s, t in pairs.items()
                                           ) + "}"


def _listing(names: list[str], renamed: Mapping[str, str]) -> str:
    """``teacher.classes=[...]``, or past :data:`SHOWN` names which names to change in it."""
    if len(names) > SHOWN:
        return f"the list teacher.classes with {_arrows(renamed)}"
    return f"teacher.classes=[{', '.join(_text(n) for n in names)}]"


def _text(name: str) -> str:
    """``name`` as written in a suggested ``teacher.classes``: plain where YAML reads it back as
    this name (``cat``, ``3``), quoted where it would not (``true``, ``007``, ``a, b``)."""
    try:
        back = load_yaml(f"[{name}]")
    except yaml.YAMLError:
        back = None
    plain = (isinstance(back, list) and len(back) == 1 and not isinstance(back[0], bool)
             and isinstance(back[0], str | int) and str(back[0]) == name)
    return name if plain else json.dumps(name, ensure_ascii=False)


def _arrows(pairs: Mapping[str, str]) -> str:
    """``a -> b, c -> d``: every pair, none left out (the reader writes them all)."""
    return ", ".join(f"{a} -> {b}" for a, b in pairs.items())


def class_note(student: Sequence[str], teacher: Sequence[str], index: Sequence[int] | None
               ) -> str | None:
    """How the teacher's logits were paired with the student's classes, for its report; None
    when its classes are the student's, in the student's order."""
    order = range(len(teacher)) if index is None else index
    renamed = [f"{s} <- {teacher[i]}" for s, i in zip(student, order, strict=True)
               if s != teacher[i]]
    dropped = [name for i, name in enumerate(teacher) if i not in set(order)]
    if not renamed and not dropped and index is None:
        return None
    note = ("student <- teacher: " + ", ".join(renamed) if renamed
            else "reordered to the student's classes")
    return note + (f"; teacher classes dropped: {', '.join(dropped)}" if dropped else "")


def shown_names(names: Sequence[str]) -> str:
    """Up to :data:`SHOWN` names, then how many there are in all."""
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")
