"""Error-driven data selection (arXiv 2412.15652): a student's errors on a small validation
set, diagnosed by a teacher into missing skills, retrieve targeted training samples from a
task-agnostic pool.

- `steps`: the student's reasoning prompt and the parser of its numbered steps;
- `switch`: mistake identification by answer-switch over the teacher's probability traces;
- `skills`: normalising and merging the skills the teacher names;
- `retrieval`: the BM25 index over pool skill labels, budget split, selection and baselines.
"""
