"""Fixed class-name lists of the classification benchmarks (paper Table 14 options).

Names are shown to the model and matched by the scorers in the form given here.
Nutrition5K has no fixed list: its adapter takes the vocabulary from the data or a file.
"""

# Food-101 (Bossard et al., 2014), in the alphabetical ClassLabel order of the release's
# underscored names (so "cheese plate" comes before "cheesecake"), with spaces as in the
# official AdaMLLM labels. Index i is HF `ethz/food101` label i.
FOOD101: tuple[str, ...] = (
    "apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad",
    "beignets", "bibimbap", "bread pudding", "breakfast burrito", "bruschetta", "caesar salad",
    "cannoli", "caprese salad", "carrot cake", "ceviche", "cheese plate", "cheesecake",
    "chicken curry", "chicken quesadilla", "chicken wings", "chocolate cake", "chocolate mousse",
    "churros", "clam chowder", "club sandwich", "crab cakes", "creme brulee", "croque madame",
    "cup cakes", "deviled eggs", "donuts", "dumplings", "edamame", "eggs benedict", "escargots",
    "falafel", "filet mignon", "fish and chips", "foie gras", "french fries", "french onion soup",
    "french toast", "fried calamari", "fried rice", "frozen yogurt", "garlic bread", "gnocchi",
    "greek salad", "grilled cheese sandwich", "grilled salmon", "guacamole", "gyoza", "hamburger",
    "hot and sour soup", "hot dog", "huevos rancheros", "hummus", "ice cream", "lasagna",
    "lobster bisque", "lobster roll sandwich", "macaroni and cheese", "macarons", "miso soup",
    "mussels", "nachos", "omelette", "onion rings", "oysters", "pad thai", "paella", "pancakes",
    "panna cotta", "peking duck", "pho", "pizza", "pork chop", "poutine", "prime rib",
    "pulled pork sandwich", "ramen", "ravioli", "red velvet cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed salad", "shrimp and grits", "spaghetti bolognese", "spaghetti carbonara",
    "spring rolls", "steak", "strawberry shortcake", "sushi", "tacos", "takoyaki", "tiramisu",
    "tuna tartare", "waffles",
)

# FoodSeg103 (Wu et al., 2021), the official `foodSeg103_id2label.json` ids 1..102.
# Ids 0 ("background") and 103 ("other ingredients") are left out of prompts and scores.
# "French beans" is capitalised in the release; scorers match names case-insensitively.
FOODSEG103: dict[int, str] = {
    1: "candy", 2: "egg tart", 3: "french fries", 4: "chocolate", 5: "biscuit", 6: "popcorn",
    7: "pudding", 8: "ice cream", 9: "cheese butter", 10: "cake", 11: "wine", 12: "milkshake",
    13: "coffee", 14: "juice", 15: "milk", 16: "tea", 17: "almond", 18: "red beans", 19: "cashew",
    20: "dried cranberries", 21: "soy", 22: "walnut", 23: "peanut", 24: "egg", 25: "apple",
    26: "date", 27: "apricot", 28: "avocado", 29: "banana", 30: "strawberry", 31: "cherry",
    32: "blueberry", 33: "raspberry", 34: "mango", 35: "olives", 36: "peach", 37: "lemon",
    38: "pear", 39: "fig", 40: "pineapple", 41: "grape", 42: "kiwi", 43: "melon", 44: "orange",
    45: "watermelon", 46: "steak", 47: "pork", 48: "chicken duck", 49: "sausage", 50: "fried meat",
    51: "lamb", 52: "sauce", 53: "crab", 54: "fish", 55: "shellfish", 56: "shrimp", 57: "soup",
    58: "bread", 59: "corn", 60: "hamburg", 61: "pizza", 62: "hanamaki baozi",
    63: "wonton dumplings", 64: "pasta", 65: "noodles", 66: "rice", 67: "pie", 68: "tofu",
    69: "eggplant", 70: "potato", 71: "garlic", 72: "cauliflower", 73: "tomato", 74: "kelp",
    75: "seaweed", 76: "spring onion", 77: "rape", 78: "ginger", 79: "okra", 80: "lettuce",
    81: "pumpkin", 82: "cucumber", 83: "white radish", 84: "carrot", 85: "asparagus",
    86: "bamboo shoots", 87: "broccoli", 88: "celery stick", 89: "cilantro mint", 90: "snow peas",
    91: "cabbage", 92: "bean sprouts", 93: "onion", 94: "pepper", 95: "green beans",
    96: "French beans", 97: "king oyster mushroom", 98: "shiitake", 99: "enoki mushroom",
    100: "oyster mushroom", 101: "white button mushroom", 102: "salad",
}
FOODSEG103_EXCLUDED: dict[int, str] = {0: "background", 103: "other ingredients"}

# UC Merced Land Use (Yang & Newsam, 2010): the 21 folder names (`agricultural`,
# `baseballdiamond`, ..., `tenniscourt`) in a friendlier spaced form, same (alphabetical) order.
UC_MERCED: tuple[str, ...] = (
    "agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral",
    "dense residential", "forest", "freeway", "golf course", "harbor", "intersection",
    "medium residential", "mobile home park", "overpass", "parking lot", "river", "runway",
    "sparse residential", "storage tanks", "tennis court",
)

# CLRS (Li et al., 2020), 25 scene classes, spaced form of the folder names.
# UNVERIFIED: written from memory (research notes mark it [M]); check the names and their
# spelling against the release's folders when the data is downloaded.
CLRS: tuple[str, ...] = (
    "airport", "bare land", "beach", "bridge", "commercial", "desert", "farmland", "forest",
    "golf course", "highway", "industrial", "meadow", "mountain", "overpass", "park", "parking",
    "playground", "port", "railway", "railway station", "residential", "river", "runway",
    "stadium", "storage tank",
)
