"""The method's prompts, as the paper specifies them.

- Synthesis (Table 1): the caption round, then the model writes the task turns that open
  with the precise and informative hints.
- Consistency filter (Figures 6-7 of the paper): copied from the seed text, PDF line wraps
  joined; the backslash sequences (\\n, \\", \\u2014) and the "Informatiive" spelling of
  the first two examples are printed that way in the paper and kept.
"""

SYNTH_CAPTION_PROMPT = "Describe the image."
# The system prompt of LLaVA-NeXT's Llama-3 conversation (Open-LLaVA-NeXT's llava_llama_3):
# the released synthesizer (AdaptLLM/visual-instruction-synthesizer, LLaVA-NeXT-Llama3-8B)
# was tuned with it, and the official synthesis prompts it with it.
LLAVA_LLAMA3_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual"
    " content that the user provides, and assist the user with a variety of tasks using"
    " natural language."
)
SYNTH_PRECISE_HINT = "Answer with a precise response."
SYNTH_INFORMATIVE_HINT = "Answer with an informative response."

CONSISTENCY_LABELS = ("Yes", "No", "Open")

CONSISTENCY_FEW_SHOT = r"""I have an image-related question for which I have received two answers: one is informative, and the other is precise. Please help me assess whether the precise answer is consistent with the informative answer.

Below are some examples. For each example, write your judgement as follows:

- Yes: Consistent, meaning the precise answer can be inferred from the informative answer.
- No: Inconsistent, meaning the precise answer cannot be inferred from the informative answer.
- Open: Indicates that the question invites multiple interpretations or that answers can be expressed through open-ended phrasing, acknowledging complexity, or encouraging personal perspectives. It is also applicable to questions that require image description, captions, or background knowledge.

## Question: Given an image of something from the kitchen, identify what it could be. The image could be of cooking tools or items that are used for eating. It could also be used for serving food or storing it.\nOptions: (a) This image contains a cup (b) This image contains a bottle (c) This image contains a knife (d) This image contains a wine glass (e) This image contains a spoon (f) This image contains a bowl (g) This image contains a fork
## Informatiive Answer: The options provided relate to identifying kitchenware or items related to food service. From the given list, the most clearly identifiable object in the image is a plastic bottle with a blue label, which is visible in the background behind the dishes. No cups, knives, wine glasses, spoons, bowls (in the sense of a single, empty bowl), or forks are distinctly visible. Therefore, the correct identification from the provided options is:\n(b) This image contains a bottle.
## Precise Answer: (a) This image contains a cup
## Consistent: No

## Question: You are provided with an image which contains two pictures side by side. Your task is to identify the differences between the two pictures. Separate the differences with a comma.
## Informatiive Answer: Upon close inspection, the differences between the two images are subtle but distinct. The shadows cast by the trees and lamp posts differ in length and direction, suggesting a slight variation in the time or position of the sun when the photos were taken. The arrangement and presence of cars vary\u2014some are present in one image but not in the other. Architectural details such as windows, roof lines, and the design on the building exteriors also show discrepancies. The color of the roof on the small central structure is different in each picture, with one appearing darker than the other. Lastly, the patterns on the sidewalks, especially the crosswalk lines, are not identical, indicating a variation in either the perspective or actual changes in the environment.
## Precise Answer: the reddish brown car moves slightly.
## Consistent: Open

## Question: Given an image of an animal, identify the kind of animal in the image. The picture could be of more popular animals that are visible around zoos or are sometimes domesticated at home. They could also sometimes be found in the wild.\nOptions: (a) This image contains a zebra (b) This image contains a cow (c) This image contains a horse (d) This image contains an elephant (e) This image contains a giraffe (f) This image contains a sheep (g) This image contains a cat (h) This image contains a bear (i) This image contains a bird (j) This image contains a dog
## Informative Answer: The animal in the image can be identified as a dog, specifically a golden retriever. This determination is based on several visual cues such as the golden coat, the size and shape of the ears, the facial structure, and the overall body size, which are characteristic of this breed. Golden retrievers are a popular domesticated breed known for their friendly and intelligent demeanor. They are commonly kept as pets and are not typically found in zoos or in the wild. The image does not contain any of the other animals listed in the options (a) through (i).
## Precise Answer: (j) This image contains a dog
## Consistent: Yes

## Question: Question: Is the picture taken outdoors?\nPlease answer the question by analyzing the scene in the provided image.
## Informative Answer: Analyzing the elements within the image, there are several indicators confirming that the picture is taken outdoors. The presence of natural elements like grass, trees, and the open sky, along with architectural features that are not enclosed, such as the adobe-style building with exterior walls and windows, support this observation. The lighting and shadows cast by the trees are consistent with natural sunlight, further corroborating the outdoor setting. Moreover, the materials used in the path and bench are typical of outdoor furnishings, designed to withstand weather conditions. All these aspects contribute to the conclusion that the photograph was taken in an exterior space, likely a garden or park associated with the building in the background.
## Precise Answer: yes
## Consistent: Yes

## Question: This task tests your ability to count number of objects. Here is the question \"How many chairs are in the photo?\""
## Informative Answer: Upon careful observation of the photo, each individual is seated in a distinct chair. The positioning of the subjects and their engagement with the camera suggests they are occupying all the chairs present at their table. There are no other chairs discernible in the immediate vicinity of the table or in the background. Therefore, it can be concluded that there are exactly four chairs in the photo, corresponding to the four people seen around the table.
## Precise Answer: two
## Consistent: No

## Question: Can you give me a caption and some background knowledge about this image?
## Informative Answer: A detailed caption for this image could read: \"A moment of reflection and accomplishment, as a retired NBA All-Star sits with the Championship Trophy, surrounded by peers and the spirit of the game.\" The image is probably taken at an NBA event dedicated to honoring the achievements of past basketball legends. The trophy next to the man symbolizes the pinnacle of success in the league, suggesting that he may be one of the accomplished players who has reached this level of success. The attire of the individuals indicates a formal celebration of basketball history, and the relaxed atmosphere hints at a session of storytelling or interviews about their experiences in the sport.\""
## Precise Answer: Moses Malone was selected by the New Orleans Jazz with the first pick. On December 9, 1975, the NBA planned to host a supplementary draft to settle negotiating rights to five ABA players who had never been eligible for the NBA draft because their college classes had not graduated and they had not applied for hardship. The teams selected in reverse order of their winloss record in the previous season. The team that made a selection must withdraw their equivalent selection in the 1976 Draft. The teams were allowed to not exercise their rights on this hardship draft and thus retained their full selection in the 1976 Draft. The draft itself attracted strong opposition from the ABA who accuse the NBA trying to reduce confidence in the stability of their league. Despite the initial postponement of the draft, the draft was finally held on December 30, 1975.
## Consistent: Open

## Question: {Instruction}
## Informative Answer: {Informative Response}
## Precise Answer: {Precise Response}
## Consistent: """.rstrip(" ")
# The template ends with "## Consistent:"; the judged label follows after a space.
assert CONSISTENCY_FEW_SHOT.endswith("## Consistent:")


def consistency_prompt(instruction: str, informative: str, precise: str) -> str:
    """Figure 7's template filled with one triplet (plain text for a base LM, no chat template)."""
    return (
        CONSISTENCY_FEW_SHOT.replace("{Instruction}", instruction)
        .replace("{Informative Response}", informative)
        .replace("{Precise Response}", precise)
    )


# A short template for small judges (the proving ground's): Figure 7's fields and label
# without the few-shot examples. The Figures 6-7 template stays the default for real runs.
CONSISTENCY_SHORT = """## Question: {Instruction}
## Informative Answer: {Informative Response}
## Precise Answer: {Precise Response}
## Consistent:"""


def judge_prompt_short(instruction: str, informative: str, precise: str) -> str:
    return (
        CONSISTENCY_SHORT.replace("{Instruction}", instruction)
        .replace("{Informative Response}", informative)
        .replace("{Precise Response}", precise)
    )
