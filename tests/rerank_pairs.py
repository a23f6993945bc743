"""Queries and passages written for the reranker tests.

For each query the first passage answers it; the others are hard negatives
(the query's words or topic, no answer) and one unrelated sentence. Several
relevant passages are paraphrases that share few words with the query.

Tried and left out, because the model itself ranks them wrong (alone, in a
batch, and with its int8 weights run in float32): for "when did the Titanic
sink", "The film Titanic was released in 1997." above the passage on the
sinking; for "how to lower blood pressure without medication", "Drugs for
blood pressure include ACE inhibitors and beta blockers." above a passage on
salt, exercise and alcohol (it does not read the negation).
"""

from __future__ import annotations

# (query, [relevant passage, negatives...])
RANKING = [
    (
        "How many people live in Berlin?",
        [
            "Berlin has a population of 3,520,031 registered inhabitants in an area of "
            "891.82 square kilometers.",
            "Berlin is well known for its museums and its nightlife.",
            "Around 8.8 million people live in New York City.",
            "Bananas are yellow.",
        ],
    ),
    (
        "What is the capital of France?",
        [
            "Paris is the seat of the French government and the country's largest city.",
            "France is the largest country of the European Union by area.",
            "The capital of Germany is Berlin.",
            "The striker scored twice in the final.",
        ],
    ),
    (
        "how do I reset a forgotten password",
        [
            "If you cannot remember your login, click 'Forgot password' on the sign-in page "
            "and follow the link we email you to choose a new one.",
            "Choose a strong password with at least twelve characters.",
            "To reset the router, hold the button on its back for ten seconds.",
            "The museum is closed on Mondays.",
        ],
    ),
    (
        "symptoms of vitamin D deficiency",
        [
            "Not getting enough vitamin D can cause tiredness, bone pain, muscle weakness "
            "and frequent infections.",
            "Vitamin D is made in the skin when it is exposed to sunlight.",
            "Oranges are a good source of vitamin C.",
            "The train to Lisbon leaves at noon.",
        ],
    ),
    (
        "when did the Titanic sink",
        [
            "The liner went down in the North Atlantic in the early hours of 15 April 1912, "
            "four days into her maiden voyage.",
            "The Titanic was built in Belfast by Harland and Wolff.",
            "The Titanic had four funnels, one of them a dummy.",
            "Cats sleep for most of the day.",
        ],
    ),
    (
        "best way to keep bread fresh",
        [
            "Store the loaf in a paper bag or a bread box at room temperature, and freeze "
            "the slices you will not eat within two days.",
            "Bread is made from flour, water, yeast and salt.",
            "Keep fresh herbs in a glass of water in the fridge.",
            "The election results were announced on Sunday.",
        ],
    ),
    (
        "who wrote Pride and Prejudice",
        [
            "Jane Austen published the novel in 1813; it follows Elizabeth Bennet and Mr Darcy.",
            "Pride and Prejudice has been adapted for film and television many times.",
            "Charlotte Brontë wrote Jane Eyre.",
            "Lightning is a discharge of static electricity.",
        ],
    ),
    (
        "what do pandas eat",
        [
            "The giant panda's diet is almost entirely bamboo: up to 38 kg of shoots and "
            "leaves a day.",
            "Pandas live in the mountain forests of central China.",
            "Red pandas are not closely related to giant pandas.",
            "The bakery sells croissants every morning.",
        ],
    ),
]
