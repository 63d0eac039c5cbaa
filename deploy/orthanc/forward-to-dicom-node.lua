-- dicom-node auto-forward for Orthanc (deploy/orthanc/orthanc.json loads it).
--
-- When a study becomes stable (no new instance for "StableAge" seconds), its
-- CT series that were not forwarded yet are sent to the DicomModalities entry
-- "dicom-node" in one asynchronous Orthanc job. Each series is marked with the
-- user metadata "DicomNodeForwarded" (the job id), so a study that becomes
-- stable again (the node's similar-case SR and key images arrive in it, or a
-- late series) never sends the same CT series twice. Only CT is forwarded:
-- the node's own SR (modality SR) and key images (modality OT) never go back.
-- A job that fails (node down) marks its series "failed:<job>"; they are sent
-- again the next time their study becomes stable, or when the job is
-- resubmitted from Orthanc Explorer (Jobs).

local NODE = 'dicom-node'          -- key of the node in "DicomModalities"
local MARK = 'DicomNodeForwarded'  -- key of the series mark in "UserMetadata"
local MODALITIES = { CT = true }   -- series modalities the node processes

local function Mark(seriesId)
  local metadata = ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata?expand'))
  return metadata[MARK]
end

function OnStableStudy(studyId, tags, metadata)
  local todo = {}
  for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local modality = series['MainDicomTags']['Modality']
    local mark = Mark(series['ID'])
    if MODALITIES[modality] and (mark == nil or string.sub(mark, 1, 7) == 'failed:') then
      table.insert(todo, series['ID'])
    end
  end
  if #todo == 0 then
    print('dicom-node: study ' .. studyId .. ' stable: no CT series left to forward')
    return
  end
  local job = ParseJson(RestApiPost('/modalities/' .. NODE .. '/store',
    DumpJson({ Resources = todo, Asynchronous = true }, true)))
  for _, seriesId in ipairs(todo) do
    RestApiPut('/series/' .. seriesId .. '/metadata/' .. MARK, job['ID'])
  end
  print('dicom-node: study ' .. studyId .. ': ' .. #todo .. ' CT series forwarded (job ' .. job['ID'] .. ')')
end

function OnJobFailure(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if job['Type'] ~= 'DicomModalityStore' then
    return
  end
  for _, seriesId in ipairs(job['Content']['ParentResources'] or {}) do
    local ok, mark = pcall(Mark, seriesId)
    if ok and mark == jobId then
      RestApiPut('/series/' .. seriesId .. '/metadata/' .. MARK, 'failed:' .. jobId)
      print('dicom-node: forwarding series ' .. seriesId .. ' failed (job ' .. jobId .. '); sent again when its study is stable again')
    end
  end
end
