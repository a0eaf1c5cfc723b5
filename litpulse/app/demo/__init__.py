"""Demo data: a deterministic generator of PubMed-shaped corpora (``litpulse demo generate``).

:mod:`litpulse.app.demo.generate` writes NLM-style update files from a seed, with their
vocabulary as package data (``vocabulary.json``); :mod:`litpulse.app.demo.pubmed_xml` is the
one PubMed XML builder that the generator, the test HTTP emulator and the tests share.
"""

#: File ``litpulse demo generate`` writes beside the corpus it generated, so that what
#: reads the files (``litpulse nightly``) can say they are not real literature.
GENERATED_MARKER = "GENERATED.txt"
