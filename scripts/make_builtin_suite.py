"""Regenerate probes/data/builtin.jsonl, the built-in hallucination suite (`--suite builtin`).

Common facts a small instruct model mostly knows, 13 relations. Distractors: three other answers
of the same relation, drawn with a fixed seed. Run: python scripts/make_builtin_suite.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = """France:Paris Germany:Berlin Italy:Rome Spain:Madrid Portugal:Lisbon Japan:Tokyo China:Beijing
Russia:Moscow Egypt:Cairo Greece:Athens Austria:Vienna Poland:Warsaw Ireland:Dublin Norway:Oslo Sweden:Stockholm
Finland:Helsinki Denmark:Copenhagen Hungary:Budapest Belgium:Brussels Netherlands:Amsterdam Thailand:Bangkok
Kenya:Nairobi Peru:Lima Argentina:Buenos_Aires Mexico:Mexico_City Cuba:Havana Canada:Ottawa Australia:Canberra
India:New_Delhi Iran:Tehran Iraq:Baghdad Turkey:Ankara Ukraine:Kyiv Chile:Santiago Colombia:Bogotá
Venezuela:Caracas Indonesia:Jakarta Philippines:Manila Vietnam:Hanoi South_Korea:Seoul"""

CONTINENTS = """France:Europe Germany:Europe Italy:Europe Spain:Europe Poland:Europe Sweden:Europe Norway:Europe
Greece:Europe Japan:Asia China:Asia India:Asia Thailand:Asia Vietnam:Asia Indonesia:Asia Pakistan:Asia
Egypt:Africa Kenya:Africa Nigeria:Africa Ethiopia:Africa Ghana:Africa Morocco:Africa Brazil:South_America
Argentina:South_America Peru:South_America Chile:South_America Colombia:South_America Canada:North_America
Mexico:North_America Australia:Oceania"""

LANGUAGES = """France:French Germany:German Italy:Italian Spain:Spanish Portugal:Portuguese Brazil:Portuguese
Japan:Japanese China:Chinese Russia:Russian Greece:Greek Poland:Polish Sweden:Swedish Norway:Norwegian
Finland:Finnish Denmark:Danish Hungary:Hungarian Netherlands:Dutch Turkey:Turkish Thailand:Thai
Vietnam:Vietnamese South_Korea:Korean Iran:Persian Mexico:Spanish Argentina:Spanish England:English
Israel:Hebrew Ukraine:Ukrainian Czech_Republic:Czech"""

ANTONYMS = """hot:cold big:small up:down day:night fast:slow happy:sad light:dark open:closed old:young
rich:poor hard:soft wet:dry early:late full:empty strong:weak tall:short loud:quiet high:low win:lose
black:white love:hate good:bad true:false inside:outside heavy:light first:last push:pull buy:sell
north:south left:right thick:thin cheap:expensive clean:dirty deep:shallow begin:end alive:dead"""

PAST = """go:went eat:ate see:saw run:ran swim:swam write:wrote speak:spoke take:took give:gave come:came
drink:drank sing:sang begin:began fly:flew drive:drove know:knew grow:grew throw:threw break:broke
choose:chose freeze:froze steal:stole wear:wore tear:tore ride:rode rise:rose buy:bought think:thought
bring:brought catch:caught teach:taught fight:fought seek:sought sell:sold tell:told find:found"""

PLURALS = """child:children mouse:mice man:men woman:women foot:feet tooth:teeth goose:geese person:people
ox:oxen cactus:cacti knife:knives wife:wives leaf:leaves wolf:wolves half:halves life:lives loaf:loaves
potato:potatoes tomato:tomatoes hero:heroes city:cities baby:babies party:parties box:boxes bus:buses
dish:dishes church:churches fox:foxes crisis:crises analysis:analyses thesis:theses"""

ELEMENTS = """hydrogen:H helium:He lithium:Li carbon:C nitrogen:N oxygen:O fluorine:F neon:Ne sodium:Na
magnesium:Mg aluminium:Al silicon:Si phosphorus:P sulfur:S chlorine:Cl argon:Ar potassium:K calcium:Ca
iron:Fe copper:Cu zinc:Zn silver:Ag gold:Au mercury:Hg lead:Pb tin:Sn uranium:U"""

NUMBERS = """1:one 2:two 3:three 4:four 5:five 6:six 7:seven 8:eight 9:nine 10:ten 11:eleven 12:twelve
13:thirteen 14:fourteen 15:fifteen 16:sixteen 17:seventeen 18:eighteen 19:nineteen 20:twenty 30:thirty
40:forty 50:fifty 60:sixty 70:seventy 80:eighty 90:ninety 100:hundred"""

COLORS = """sky:blue grass:green banana:yellow snow:white coal:black blood:red lemon:yellow tomato:red
carrot:orange chocolate:brown milk:white emerald:green ruby:red sapphire:blue pumpkin:orange
strawberry:red cherry:red lime:green charcoal:black cucumber:green sunflower:yellow pearl:white
salt:white ink:black cocoa:brown"""

AUTHORS = """Hamlet:William_Shakespeare Romeo_and_Juliet:William_Shakespeare Macbeth:William_Shakespeare
Pride_and_Prejudice:Jane_Austen Emma:Jane_Austen Oliver_Twist:Charles_Dickens Great_Expectations:Charles_Dickens
A_Christmas_Carol:Charles_Dickens War_and_Peace:Leo_Tolstoy Anna_Karenina:Leo_Tolstoy 1984:George_Orwell
Animal_Farm:George_Orwell Don_Quixote:Miguel_de_Cervantes The_Odyssey:Homer The_Iliad:Homer
Harry_Potter:J.K._Rowling The_Hobbit:J.R.R._Tolkien The_Lord_of_the_Rings:J.R.R._Tolkien
Moby-Dick:Herman_Melville Frankenstein:Mary_Shelley Dracula:Bram_Stoker The_Raven:Edgar_Allan_Poe
Crime_and_Punishment:Fyodor_Dostoevsky The_Origin_of_Species:Charles_Darwin Faust:Johann_Wolfgang_von_Goethe"""

CITIES = """Paris:France London:England Berlin:Germany Munich:Germany Hamburg:Germany Rome:Italy Milan:Italy
Venice:Italy Naples:Italy Madrid:Spain Barcelona:Spain Seville:Spain Lisbon:Portugal Tokyo:Japan Osaka:Japan
Kyoto:Japan Beijing:China Shanghai:China Moscow:Russia Cairo:Egypt Sydney:Australia Melbourne:Australia
Toronto:Canada Vancouver:Canada Mumbai:India Delhi:India Istanbul:Turkey Athens:Greece Amsterdam:Netherlands
Vienna:Austria Dublin:Ireland Chicago:United_States"""

ANIMAL_SOUNDS = """dog:bark cat:meow cow:moo sheep:baa lion:roar duck:quack pig:oink horse:neigh owl:hoot
snake:hiss frog:croak bee:buzz wolf:howl donkey:bray mouse:squeak rooster:crow"""

SEQUENCE = """January:February February:March March:April April:May May:June June:July July:August
August:September September:October October:November November:December December:January Monday:Tuesday
Tuesday:Wednesday Wednesday:Thursday Thursday:Friday Friday:Saturday Saturday:Sunday Sunday:Monday
spring:summer summer:autumn autumn:winter winter:spring"""

RELATIONS = [
    ("capital", CAPITALS, "What is the capital of {}?"),
    ("continent", CONTINENTS, "On which continent is {}?"),
    ("language", LANGUAGES, "What is the main language spoken in {}?"),
    ("antonym", ANTONYMS, 'What is the opposite of "{}"?'),
    ("past-tense", PAST, 'What is the past tense of the verb "{}"?'),
    ("plural", PLURALS, 'What is the plural of "{}"?'),
    ("element-symbol", ELEMENTS, "What is the chemical symbol of {}?"),
    ("number-word", NUMBERS, "How is the number {} written in English words?"),
    ("color", COLORS, "What color is {}?"),
    ("author", AUTHORS, "Who wrote {}?"),
    ("city-country", CITIES, "In which country is the city of {}?"),
    ("animal-sound", ANIMAL_SOUNDS, "What sound does a {} make?"),
    ("next-in-sequence", SEQUENCE, "What comes after {}?"),
]

ALIASES = {
    "Kyiv": ["Kiev"],
    "aluminium": [],
    "Bogotá": ["Bogota"],
    "autumn": ["fall"],
    "United States": ["USA", "America"],
    "England": ["United Kingdom", "UK", "Britain"],
    "Chinese": ["Mandarin"],
    "Persian": ["Farsi"],
    "hundred": ["one hundred"],
    "closed": ["shut"],
    "J.K. Rowling": ["Rowling"],
    "New Delhi": ["Delhi"],
    "J.R.R. Tolkien": ["Tolkien"],
    "William Shakespeare": ["Shakespeare"],
    "Charles Dickens": ["Dickens"],
}


def main() -> None:
    rng = random.Random(11)
    rows = []
    for relation, table, question in RELATIONS:
        pairs = [p.split(":", 1) for p in table.split()]
        pairs = [(a.replace("_", " "), b.replace("_", " ")) for a, b in pairs]
        values = sorted({b for _, b in pairs})
        for i, (subject, gold) in enumerate(pairs, 1):
            aliases = ALIASES.get(gold, [])
            pool = [v for v in values if v != gold and v not in aliases]
            subj = f"the {subject}" if relation == "color" else subject
            rows.append(
                {
                    "id": f"{relation}/{i}",
                    "relation": relation,
                    "question": question.format(subj),
                    "gold": gold,
                    "aliases": aliases,
                    "distractors": rng.sample(pool, 3),
                }
            )
    out = Path(__file__).resolve().parent.parent / "probes" / "data" / "builtin.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} facts, {len(RELATIONS)} relations -> {out}")


if __name__ == "__main__":
    main()
