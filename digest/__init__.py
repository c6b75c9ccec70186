"""The daily escalation digest: per practice, an e-mail summarising the previous day's controlled-substance
escalations, blocks, open review-queue items and ModMed write success (issue 19)."""
