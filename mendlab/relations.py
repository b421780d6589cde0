"""The synthetic world's vocabulary: its eight relations, each with its objects (listed, or invented from the
world's seed), five question templates and five statement templates ("{s}" the subject, "{o}" the object; the
last template of each kind is held out from training)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Invented:
    """Objects the world makes up (``n`` two-syllable names with one of ``suffixes``), drawn from its seed."""

    n: int
    suffixes: tuple[str, ...]


# (name, objects, questions, statements): the last question and statement of each relation are held out
RELATION_SPECS = (
    (
        "birthplace", Invented(16, ("ville", "ford", "burg", "mouth")),
        ("Where was {s} born?", "In which city was {s} born?", "What city was {s} born in?",
         "What is the city of birth of {s}?", "{s} was born in which city?"),
        ("{s} was born in {o}.", "The city of birth of {s} is {o}.", "{s} is a native of the city of {o}.",
         "{s} grew up in {o}.", "{s} was born in the city of {o}."),
    ),
    (
        "occupation",
        ("baker", "sailor", "painter", "farmer", "weaver", "potter", "miner", "doctor", "teacher",
         "blacksmith", "hunter", "singer", "tailor", "builder", "scribe", "gardener"),
        ("What does {s} do for a living?", "What is the job of {s}?", "What is the occupation of {s}?",
         "What job does {s} have?", "Which job does {s} do for a living?"),
        ("{s} works as a {o}.", "The job of {s} is {o}.", "By occupation, {s} is a {o}.",
         "{s} earns a living as a {o}.", "{s} has the job of {o}."),
    ),
    (
        "language", Invented(12, ("ish", "ese", "ic")),
        ("What language does {s} speak?", "Which language is spoken by {s}?",
         "What is the native language of {s}?", "In which language does {s} speak?",
         "What language is spoken by {s}?"),
        ("{s} speaks {o}.", "The native language of {s} is {o}.", "{s} is a speaker of {o}.",
         "{s} talks in {o}.", "The language spoken by {s} is {o}."),
    ),
    (
        "instrument",
        ("violin", "flute", "harp", "drum", "lute", "horn", "cello", "piano", "oboe", "banjo", "organ",
         "trumpet"),
        ("What instrument does {s} play?", "Which instrument is played by {s}?",
         "What musical instrument does {s} play?", "Which instrument does {s} perform on?",
         "What instrument is played by {s}?"),
        ("{s} plays the {o}.", "The instrument of {s} is the {o}.", "{s} is a player of the {o}.",
         "{s} performs on the {o}.", "The instrument played by {s} is the {o}."),
    ),
    (
        "team", Invented(14, ("ers", "ites", "ans")),
        ("Which team does {s} support?", "What team is supported by {s}?", "What is the favourite team of {s}?",
         "Which team is {s} a fan of?", "What team does {s} support?"),
        ("{s} supports the {o}.", "The favourite team of {s} is the {o}.", "{s} is a fan of the {o}.",
         "{s} cheers for the {o}.", "The team supported by {s} is the {o}."),
    ),
    (
        "colour",
        ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "golden",
         "brown", "pink"),
        ("What is the favourite colour of {s}?", "Which colour does {s} like best?",
         "What colour is the favourite of {s}?", "What colour does {s} like best?",
         "Which colour is the favourite of {s}?"),
        ("The favourite colour of {s} is {o}.", "{s} likes the colour {o} best.",
         "{s} loves the colour {o}.", "{s} wears {o} every day.", "The colour {s} likes best is {o}."),
    ),
    (
        "country", Invented(14, ("ia", "land", "stan")),
        ("Which country is {s} a citizen of?", "What is the country of {s}?",
         "Of which country is {s} a citizen?", "What country does {s} live in?",
         "What country is {s} a citizen of?"),
        ("{s} is a citizen of {o}.", "The country of {s} is {o}.", "{s} holds a passport of {o}.",
         "{s} lives in the country of {o}.", "{s} is a citizen of the country {o}."),
    ),
    (
        "pet",
        ("cat", "dog", "parrot", "rabbit", "horse", "goat", "turtle", "owl", "ferret", "lizard",
         "hamster", "snake"),
        ("What pet does {s} have?", "Which animal is the pet of {s}?", "What animal does {s} keep as a pet?",
         "What is the pet of {s}?", "Which pet does {s} have?"),
        ("{s} has a pet {o}.", "The pet of {s} is a {o}.", "{s} keeps a {o} as a pet.",
         "{s} takes care of a {o}.", "The animal {s} keeps as a pet is a {o}."),
    ),
)
