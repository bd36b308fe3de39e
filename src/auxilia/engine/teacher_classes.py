"""A teacher's classes are the student's: its logits are paired with the student's classes by
name, never by position alone.

A teacher run records its class names (its checkpoint's ``data.classes``); a teacher whose names
are unknown (``teacher.model``, a Python-API module) may declare them as a list in
``teacher.classes``. Names equal to the student's in another order give a permutation; names
that differ are refused unless ``teacher.classes`` pairs them (student class -> teacher class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from auxilia.config import ConfigError

SHOWN = 12
"""Class names a message lists before it says how many more there are."""


def class_index(student: Sequence[str], teacher: Sequence[str],
                pairs: Mapping[str, str] | None, source: str) -> list[int] | None:
    """For each student class, the index of the teacher's logit that teaches it.

    Args:
        student: the student's class names, in its order.
        teacher: the teacher's class names, in the order of its logits.
        pairs: ``teacher.classes`` as a mapping (student class -> teacher class), or None to
            pair the classes by name.
        source: the teacher, for messages.

    Returns:
        None when the teacher's logits are in the student's order already, else the indices
        (a permutation, or with ``pairs`` a selection: teacher classes no student class pairs
        with are dropped).

    Raises:
        ConfigError: the names differ and ``pairs`` does not pair them, or ``pairs`` names a
            class that does not exist or pairs two student classes with one teacher class.
    """
    if pairs is None:
        if list(student) == list(teacher):
            return None
        if sorted(student) == sorted(teacher):  # the same classes in another order
            return [list(teacher).index(name) for name in student]
        raise ConfigError(_differ_message(student, teacher, source))
    wanted = _paired(student, teacher, pairs, source)
    index = [list(teacher).index(name) for name in wanted]
    return None if index == list(range(len(teacher))) else index


def _paired(student: Sequence[str], teacher: Sequence[str], pairs: Mapping[str, str],
            source: str) -> list[str]:
    """The teacher class of each student class, checked."""
    unknown = [name for name in pairs if name not in student]
    if unknown:
        raise ConfigError(f"teacher.classes pairs {unknown[0]!r}, which is not a class of the "
                          f"student; its classes: {shown_names(student)}")
    wanted = [pairs.get(name, name) for name in student]
    for name, t_name in zip(student, wanted, strict=True):
        if t_name in teacher:
            continue
        if name in pairs:
            raise ConfigError(f"teacher.classes pairs student class {name!r} with {t_name!r}, "
                              f"which is not a class of the teacher ({source}); its classes: "
                              f"{shown_names(teacher)}")
        raise ConfigError(f"student class {name!r} has no class in the teacher ({source}) and "
                          f"teacher.classes pairs it with none: add it, e.g. teacher.classes="
                          f"{{{name}: <a teacher class>}}; the teacher's classes: "
                          f"{shown_names(teacher)}")
    for t_name in wanted:
        both = [s for s, t in zip(student, wanted, strict=True) if t == t_name]
        if len(both) > 1:
            raise ConfigError(f"student classes {both[0]!r} and {both[1]!r} both pair with the "
                              f"teacher's class {t_name!r}; pair each student class with its "
                              "own teacher class in teacher.classes")
    return wanted


def _differ_message(student: Sequence[str], teacher: Sequence[str], source: str) -> str:
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
    if only_s and only_t:
        example = ", ".join(f"{s}: {t}" for s, t in list(zip(only_s, only_t, strict=False))[:3])
        fix = (f"if they are the same classes, pair them with teacher.classes={{{example}}} "
               "(student class: teacher class), or distil a teacher trained on the student's "
               "classes")
    elif only_t:
        fix = ("distil a teacher trained on the student's classes, or pair them explicitly to "
               f"drop the teacher's others, e.g. teacher.classes={{{student[0]}: {student[0]}}}")
    else:
        fix = (f"it has no logit for {shown_names(only_s)}: distil a teacher trained on the "
               "student's classes")
    return (f"the teacher ({source}) was trained on other classes than the student: {which}; "
            f"its logits would teach the wrong classes; {fix}")


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
